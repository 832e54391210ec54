"""Task families: functions that draw one task (an Episode) from a key, on the device."""

from mtpjax.tasks import (classification, correlated, fashion_mnist, omniglot, sinusoid, text,
                          tokens, toy)

__all__ = ["classification", "correlated", "fashion_mnist", "omniglot", "sinusoid", "text",
           "tokens", "toy"]

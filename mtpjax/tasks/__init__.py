"""Task families: functions that draw one task (an Episode) from a key, on the device."""

from mtpjax.tasks import classification, sinusoid, tokens

__all__ = ["classification", "sinusoid", "tokens"]

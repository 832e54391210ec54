"""Task families: functions that draw one task (an Episode) from a key, on the device."""

from mtpjax.tasks import sinusoid

__all__ = ["sinusoid"]

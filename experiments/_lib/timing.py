"""Compile time from JAX's own monitoring events."""

import contextlib
from typing import Optional

import jax


COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def compile_timer(total: Optional[dict] = None):
  """Yields a dict whose "seconds" sums JAX's trace, lowering and XLA compile durations.

  With `total`, durations are added to that dict's "seconds", so code defined before the
  `with` can read it.

  These are JAX's own events (jax.monitoring), so the figure excludes running the step,
  which the first call's wall time includes (5-7 s for an Omniglot step with 15 queries).
  """
  total = {"seconds": 0.0} if total is None else total

  def listener(event, duration, **kwargs):
    del kwargs
    if event in COMPILE_EVENTS:
      total["seconds"] += duration

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield total
  finally:
    unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
    if unregister is not None:  # older jax has no unregister: the listener stays, harmless
      unregister(listener)

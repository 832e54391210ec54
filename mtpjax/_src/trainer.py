"""The trainer core: one state type and one builder of the jitted, donated step and its scan.

Every trainer (meta_learner, multitask_trainer) is a `step(state, batch=None)` function over a
`TrainState`; what differs between them is only how the gradients are computed. `compile_step`
turns such a function into the pair a user calls:

  step(state[, batch]) -> (state, metrics)   jitted, state donated
  run(state, n)        -> (state, metrics)   n steps in one jitted lax.scan, batches drawn on
                                             the device; metrics stacked [n]. n = 1 calls the
                                             step's own executable (no scan of length 1)

and the checkpointer saves and restores the whole `TrainState`, `extra` included, so every
trainer resumes where it stopped.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax

from mtpjax._src import types


class TrainState(NamedTuple):
  """Everything a training run needs to continue: checkpoint this and nothing else.

  extra: the method's own state, e.g. a multi-task balancer's (FAMO's logits, DWA's loss
  history); None for meta-learning.
  """

  step: jax.Array       # int32 scalar: steps taken
  params: types.Params  # every role, trained or not
  opt_state: Any        # optimizer state, over the trained roles only
  key: types.PRNGKey    # root key; step keys are fold_in(key, step)
  extra: Any = None


class Compiled(NamedTuple):
  step: Callable[..., tuple[TrainState, dict]]
  run: Callable[..., tuple[TrainState, dict]]


def check_num_steps(num_steps) -> None:
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"run: num_steps must be a positive int, got {num_steps!r}")


def compile_step(step: Callable[..., tuple[TrainState, dict]], *, what: str,
                 can_sample: bool, check_batch: Optional[Callable[[TrainState, Any], None]] = None,
                 donate: bool = True, jit: bool = True, data: Any = None) -> Compiled:
  """The jitted, donated `step` and its scanned `run`, with the argument checks.

  Args:
    step: step(state, batch=None) -> (state, metrics); with batch None it draws its own.
      Given `data`, step(state, batch, data): data are the arrays its sampler reads (see
      mtpjax._src.hoist), passed as arguments so that no executable holds them as constants.
    what: the trainer's name in error messages.
    can_sample: whether `step` can draw its own batches (the trainer was given `sample`).
    check_batch: check_batch(state, batch), run in Python on a given batch before tracing
      (shapes are static, so errors name the argument instead of a failing dot_general).
    donate: donate the state (its buffers are reused in place).
    jit: compile (turn off only to debug).
  """
  donated = (0,) if donate else ()
  if data is None:
    one_step = step
    step = lambda state, batch, data: one_step(state, batch)  # noqa: E731

  def scan(state, num_steps, data):
    # One executable for many steps: XLA allocates its temporaries once per call, not once per
    # step, which on the CPU saves most of the page faults of a fresh allocation.
    return jax.lax.scan(lambda carry, _: step(carry, None, data), state, None,
                        length=num_steps)

  compiled = jax.jit(step, donate_argnums=donated) if jit else step
  compiled_run = jax.jit(scan, static_argnums=(1,), donate_argnums=donated) if jit else scan

  def checked_step(state: TrainState, batch: Any = None):
    if batch is None:
      if not can_sample:
        raise ValueError(f"{what}: step(state) draws its own batch only when built with "
                         f"`sample`; else call step(state, batch)")
      return compiled(state, None, data)
    if check_batch is not None:
      check_batch(state, batch)
    return compiled(state, batch, data)

  def checked_run(state: TrainState, num_steps: int):
    if not can_sample:
      raise ValueError(f"{what}: run(state, num_steps) samples its own batches: build it with "
                       f"`sample`, or call step(state, batch) once per batch")
    check_num_steps(num_steps)
    if num_steps == 1:  # the step's own executable, not a scan of length 1
      state, metrics = compiled(state, None, data)
      return state, jax.tree.map(lambda m: m[None], metrics)
    return compiled_run(state, num_steps, data)

  return Compiled(checked_step, checked_run)

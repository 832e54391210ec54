"""A thin orbax wrapper: atomic saves of a MetaState plus JSON metadata, the last N kept, and
restore that falls back to an older checkpoint when the newest is unreadable."""

import logging
import os
import shutil
import time
from typing import Optional

import jax
import orbax.checkpoint as ocp

from mtpjax._src import meta as meta_lib

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one that does not fit the run."""


def _to_tree(state: meta_lib.MetaState) -> dict:
  # Typed PRNG keys are stored as their raw uint32 data: portable and exact.
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step,
          "key": jax.random.key_data(state.key)}


def _from_tree(tree: dict, like: meta_lib.MetaState) -> meta_lib.MetaState:
  impl = jax.random.key_impl(like.key)
  return meta_lib.MetaState(step=tree["step"], params=tree["params"],
                            opt_state=tree["opt_state"],
                            key=jax.random.wrap_key_data(tree["key"], impl=impl))


class Checkpointer:
  """Saves and restores MetaStates under `directory/<step>/`.

  Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
  crash mid-write leaves the previous checkpoints intact.

  >>> ckpt = Checkpointer("/tmp/run/checkpoints", max_to_keep=3)   # doctest: +SKIP
  >>> ckpt.save(state, {"config": cfg})                            # doctest: +SKIP
  >>> state, meta = ckpt.restore(like=state)                       # doctest: +SKIP
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=False,
                                             cleanup_tmp_directories=True))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, state: meta_lib.MetaState, metadata: dict) -> int:
    step = int(jax.device_get(state.step))
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_tree(state)), meta=ocp.args.JsonSave(metadata)),
        force=True)
    self._manager.wait_until_finished()
    return step

  def restore(self, like: meta_lib.MetaState, step: Optional[int] = None):
    """Restores the newest readable checkpoint (or `step`) into the structure of `like`.

    Returns (state, metadata, step), or None when the directory holds no checkpoint. An
    unreadable checkpoint is skipped with a warning; if none is readable, CheckpointError.
    """
    steps = self.steps() if step is None else [step]
    if not steps:
      return None
    # Targets carry `like`'s shardings, so a checkpoint written on one device count or
    # process layout restores onto this run's (orbax refuses a topology change without them).
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        _to_tree(like))
    errors = []
    for s in reversed(steps):
      try:
        out = self._manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return _from_tree(out.state, like), out.meta, s
      except Exception as e:  # orbax raises several types for truncated/garbled files
        msg = f"checkpoint {os.path.join(self.directory, str(s))} is unreadable ({type(e).__name__}: {str(e)[:200]})"
        errors.append(msg)
        aside = self._move_aside(s)
        log.warning("%s; moved it to %s and falling back to an older checkpoint", msg, aside)
    raise CheckpointError("no usable checkpoint in " + self.directory + ":\n  " + "\n  ".join(errors))

  def _move_aside(self, step: int) -> str:
    """Keeps an unreadable checkpoint for inspection, out of the way of new saves."""
    aside_dir = self.directory + ".unreadable"
    os.makedirs(aside_dir, exist_ok=True)
    dest = os.path.join(aside_dir, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(os.path.join(self.directory, str(step)), dest)
    self._manager.reload()
    return dest

  def close(self):
    self._manager.close()


def restore_params(directory: str, *, step: Optional[int] = None,
                   roles: Optional[tuple] = None) -> dict:
  """Loads the parameters saved by another run, without knowing their structure in advance.

  For SPoT-style transfer: `restore_params(run + "/checkpoints", roles=("prompt",))["prompt"]`
  initialises a new task's prompt from a source run. Arrays come back as numpy arrays.
  """
  directory = os.path.abspath(directory)
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps())
  if not steps:
    raise CheckpointError(f"no checkpoint in {directory}")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise CheckpointError(f"no checkpoint for step {step} in {directory}; have {steps}")
  out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  params = dict(out.state["params"])
  manager.close()
  if roles is not None:
    missing = [r for r in roles if r not in params]
    if missing:
      raise CheckpointError(f"checkpoint {directory}/{step} has no roles {missing}; it has "
                            f"{sorted(params)}")
    params = {r: params[r] for r in roles}
  return params

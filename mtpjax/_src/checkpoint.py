"""A thin orbax wrapper: atomic saves of a whole TrainState plus JSON metadata, the last N kept, and
restore that falls back to an older checkpoint when the newest is unreadable."""

import logging
import os
import shutil
import time
from typing import Optional

import jax
import orbax.checkpoint as ocp

from mtpjax._src import trainer as trainer_lib

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one that does not fit the run."""


class StructureMismatch(CheckpointError):
  """A readable checkpoint of another structure (another model, method or experiment): it is
  left where it is, so the run that wrote it still resumes."""


def _path_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _layout(tree) -> dict:
  """{"params/w": (shape, dtype)} for every array of a tree as orbax stores it (dicts,
  NamedTuples and metadata trees alike)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
  return {"/".join(_path_name(k) for k in path): (tuple(v.shape), str(v.dtype))
          for path, v in flat if hasattr(v, "shape")}


def _layout_diff(saved: dict, wanted: dict, limit: int = 6) -> list:
  order = lambda k: (not k.startswith("params"), k)  # the parameters first: they say most
  lines = [f"{k}: saved {saved[k][0]} {saved[k][1]}, this run {wanted[k][0]} {wanted[k][1]}"
           for k in sorted(set(saved) & set(wanted), key=order) if saved[k] != wanted[k]]
  lines += [f"{k}: only in the checkpoint" for k in sorted(set(saved) - set(wanted))]
  lines += [f"{k}: only in this run" for k in sorted(set(wanted) - set(saved))]
  return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_tree(state: trainer_lib.TrainState) -> dict:
  """The whole state as orbax stores it. Typed PRNG keys are stored as their raw uint32 data
  (portable and exact); the method's extra state (a balancer's: dicts, optax states, None
  fields) as a flat dict of its leaves, rebuilt from the restore target's structure."""
  tree = {"params": state.params, "opt_state": state.opt_state, "step": state.step,
          "key": jax.random.key_data(state.key)}
  extra = jax.tree.leaves(state.extra)
  if extra:  # absent for meta-learning, so its checkpoints keep their layout
    tree["extra"] = {f"{i:04d}": (jax.random.key_data(x) if _is_key(x) else x)
                     for i, x in enumerate(extra)}
  return tree


def _from_tree(tree: dict, like: trainer_lib.TrainState) -> trainer_lib.TrainState:
  key = jax.random.wrap_key_data(tree["key"], impl=jax.random.key_impl(like.key))
  like_extra, treedef = jax.tree.flatten(like.extra)
  extra = [(jax.random.wrap_key_data(tree["extra"][f"{i:04d}"], impl=jax.random.key_impl(x))
            if _is_key(x) else tree["extra"][f"{i:04d}"]) for i, x in enumerate(like_extra)]
  return trainer_lib.TrainState(step=tree["step"], params=tree["params"],
                                opt_state=tree["opt_state"], key=key,
                                extra=jax.tree.unflatten(treedef, extra))


class Checkpointer:
  """Saves and restores TrainStates (the method's extra state included) under `directory/<step>/`.

  Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
  crash mid-write leaves the previous checkpoints intact.

  >>> import tempfile, jax.numpy as jnp
  >>> state = trainer_lib.TrainState(jnp.array(7), {"w": jnp.ones(2)}, (), jax.random.key(0),
  ...                                extra={"history": jnp.zeros(3)})
  >>> ckpt = Checkpointer(tempfile.mkdtemp() + "/checkpoints", max_to_keep=3)
  >>> ckpt.save(state, {"config": {"lr": 0.1}})
  7
  >>> restored, meta, step = ckpt.restore(like=state)
  >>> meta, step, restored.extra["history"].shape
  ({'config': {'lr': 0.1}}, 7, (3,))
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
    self.directory = os.path.abspath(directory)
    # The handlers are named up front so that a checkpoint's array metadata (names, shapes,
    # dtypes) reads before any restore, in a fresh process too.
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=False,
                                             cleanup_tmp_directories=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, state: trainer_lib.TrainState, metadata: dict) -> int:
    step = int(jax.device_get(state.step))
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_tree(state)), meta=ocp.args.JsonSave(metadata)),
        force=True)
    self._manager.wait_until_finished()
    return step

  def metadata(self) -> Optional[tuple[dict, int]]:
    """(metadata, step) of the newest checkpoint whose metadata reads, or None; reads no
    arrays and moves nothing, so a caller can compare configs before any restore."""
    for s in reversed(self.steps()):
      try:
        out = self._manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return out.meta, s
      except Exception:  # unreadable: restore() reports and moves it aside
        continue
    return None

  def restore(self, like: trainer_lib.TrainState, step: Optional[int] = None):
    """Restores the newest readable checkpoint (or `step`) into the structure of `like`.

    Returns (state, metadata, step), or None when the directory holds no checkpoint. A
    checkpoint whose arrays differ from `like`'s (names, shapes or dtypes, read from its
    metadata) is StructureMismatch, naming the differences, and nothing is moved. Only a
    checkpoint whose bytes cannot be read is moved aside to `<directory>.unreadable/`, with
    a warning, for an older one; if none is readable, CheckpointError.
    """
    steps = self.steps() if step is None else [step]
    if not steps:
      return None
    # Targets carry `like`'s shardings, so a checkpoint written on one device count or
    # process layout restores onto this run's (orbax refuses a topology change without them).
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        _to_tree(like))
    wanted = _layout(_to_tree(like))
    errors = []
    for s in reversed(steps):
      try:
        saved = _layout(self._manager.item_metadata(s)["state"].tree)
      except Exception:  # unreadable metadata: the restore below reports it
        saved = None
      if saved is not None and saved != wanted:
        raise StructureMismatch(
            f"checkpoint {os.path.join(self.directory, str(s))} holds a state of another "
            f"structure (another model, method or experiment); it was left in place:\n  "
            + "\n  ".join(_layout_diff(saved, wanted)))
      try:
        out = self._manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return _from_tree(out.state, like), out.meta, s
      except Exception as e:  # orbax raises several types for truncated/garbled files
        if "not compatible with the stored shape" in str(e):  # readable, another structure
          raise StructureMismatch(
              f"checkpoint {os.path.join(self.directory, str(s))} holds arrays of other "
              f"shapes; it was left in place: {str(e)[:300]}") from None
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

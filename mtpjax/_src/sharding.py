"""Tasks of a meta-batch split over the devices of a mesh, with jit and shardings (no pmap).

The tasks are split along the mesh axis "tasks": the per-task keys are constrained to that
axis inside the jitted step, so each device samples, adapts and differentiates its own tasks,
and the mean over tasks becomes one all-reduce that XLA inserts. Task i is drawn from the same
key whatever the device count, so the same seed gives the same meta-batch on 1 or N devices.

The meta-parameters (and the optimizer state) are replicated, or, on a mesh with a second
axis "model" (`task_mesh(model=M)`), every large array is split over
that axis along one of its dimensions, so each device holds 1/M of a large encoder and its
Adam moments (the ZeRO-3 / FSDP layout); XLA gathers a layer's weights where the step uses
them. Which dimension is a function of the shape alone (`param_spec`), so parameters, their
gradients and their optimizer moments agree.

The same code runs on several processes (hosts): `place` / `local_copy` move the state
between one process's arrays and global ones. The library reads no environment: starting
jax.distributed from a launch's variables and the experiments' mesh from $MTPJAX_DEVICES /
$MTPJAX_MODEL_SHARDS live in experiments/_lib/env.py.
"""

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

TASK_AXIS = "tasks"
MODEL_AXIS = "model"
# Arrays with fewer elements stay replicated on a "model" axis: splitting them saves little
# memory and costs a gather each (biases, norms, scalars, keys).
MIN_SHARDED_SIZE = 4096


def task_mesh(devices: Optional[Sequence[jax.Device]] = None, *,
              model: int = 1) -> jax.sharding.Mesh:
  """A mesh over `devices` (default: every device of every process): 1-D, named "tasks"; or,
  with `model` > 1, 2-D ("tasks", "model") of shape (devices / model, model), whose "model"
  axis splits every large parameter array (`param_spec`). Devices next to each other in the
  list (one host's) share a "model" group, so the gathers of the weights stay local.

  Its axis types are Auto, so the step places tasks with sharding constraints and XLA
  partitions the rest.

  >>> mesh = task_mesh(jax.devices()[:1])
  >>> dict(mesh.shape)
  {'tasks': 1}

  `meta_learner(..., mesh=task_mesh())` then splits each meta-batch over every device.
  """
  devices = list(jax.devices() if devices is None else devices)
  if isinstance(model, bool) or not isinstance(model, int) or model < 1:
    raise ValueError(f"task_mesh: model must be a positive int, got {model!r}")
  if len(devices) % model:
    raise ValueError(f"task_mesh: model={model} does not divide the {len(devices)} devices")
  if model == 1:
    return jax.make_mesh((len(devices),), (TASK_AXIS,), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))
  return jax.make_mesh((len(devices) // model, model), (TASK_AXIS, MODEL_AXIS),
                       devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def model_shards(mesh: Optional[jax.sharding.Mesh]) -> int:
  """The size of the mesh's "model" axis (1 without one)."""
  return 1 if mesh is None else dict(mesh.shape).get(MODEL_AXIS, 1)


def param_spec(shape: Sequence[int], mesh: jax.sharding.Mesh,
               min_size: int = MIN_SHARDED_SIZE) -> PartitionSpec:
  """Where an array of `shape` lives: split over "model" along its largest dimension that the
  axis divides (the first of equals), when it has at least `min_size` elements; otherwise (or
  without a "model" axis) replicated."""
  n = model_shards(mesh)
  if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return PartitionSpec()
  dims = [d for d, size in enumerate(shape) if size % n == 0]
  if not dims:
    return PartitionSpec()
  d = max(dims, key=lambda d: (shape[d], -d))
  return PartitionSpec(*([None] * d + [MODEL_AXIS]))


def constrain_params(tree, mesh: Optional[jax.sharding.Mesh]):
  """Inside a jitted step: keeps the state's arrays where `place` put them (no-op without a
  "model" axis, where XLA keeps replicated state replicated by itself)."""
  if model_shards(mesh) == 1:
    return tree
  return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(
      a, NamedSharding(mesh, param_spec(a.shape, mesh))), tree)


def check_mesh(mesh: jax.sharding.Mesh, meta_batch_size: int,
               what: str = "meta_batch_size") -> int:
  """The number of task shards; a clear error for a mesh without a "tasks" axis or a meta-batch
  that does not divide over it."""
  if TASK_AXIS not in mesh.axis_names:
    raise ValueError(f"mesh: needs an axis named {TASK_AXIS!r} to split tasks over, has "
                     f"{mesh.axis_names}; build it with mj.task_mesh()")
  n = mesh.shape[TASK_AXIS]
  if meta_batch_size % n:
    raise ValueError(f"{what}={meta_batch_size} does not divide over the {n} devices of "
                     f"the mesh's {TASK_AXIS!r} axis; use a multiple of {n} (e.g. "
                     f"{(meta_batch_size // n + 1) * n})")
  return n


def split_tasks(tree, mesh: jax.sharding.Mesh):
  """Constrains every array of `tree` (leading task axis) to be split over the "tasks" axis."""
  sharding = NamedSharding(mesh, PartitionSpec(TASK_AXIS))
  return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


def place(tree, mesh: jax.sharding.Mesh):
  """Places every array of `tree` (the state: parameters, optimizer state, key) on the mesh:
  replicated on every device, or, on a mesh with a "model" axis, large arrays split over it
  (`param_spec`).

  On several processes each one holds the same values (the same seed built them) and places
  its copy (or its devices' slices) on its own devices, which make one global array.
  """
  def one(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    sharding = NamedSharding(mesh, param_spec(np.shape(x), mesh))
    if sharding.is_fully_addressable:
      return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree.map(one, tree)


def local_copy(tree):
  """A (possibly multi-process) pytree of global arrays as this process's numpy arrays, for
  work every process repeats on its own devices (evaluation, plots). Arrays split over
  processes are gathered, a collective: every process must call this at the same point."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x
  return jax.tree.map(one, tree)

"""Tasks of a meta-batch split over the devices of a mesh, with jit and shardings (no pmap).

The tasks are split along the mesh axis "tasks": the per-task keys are constrained to that
axis inside the jitted step, so each device samples, adapts and differentiates its own tasks,
and the mean over tasks becomes one all-reduce that XLA inserts. Task i is drawn from the same
key whatever the device count, so the same seed gives the same meta-batch on 1 or N devices.

The meta-parameters (and the optimizer state) are replicated, or, on a mesh with a second
axis "model" (`task_mesh(model=M)`, $MTPJAX_MODEL_SHARDS), every large array is split over
that axis along one of its dimensions, so each device holds 1/M of a large encoder and its
Adam moments (the ZeRO-3 / FSDP layout); XLA gathers a layer's weights where the step uses
them. Which dimension is a function of the shape alone (`param_spec`), so parameters, their
gradients and their optimizer moments agree.

The same code runs on several processes (hosts): `initialize_from_env` starts
jax.distributed from a launch's environment, `mesh_from_env` is the experiments' mesh, and
`place` / `local_copy` move the state between one process's arrays and global ones.
"""

import os
from typing import Mapping, Optional, Sequence

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

  >>> mesh = task_mesh()                                                     # doctest: +SKIP
  >>> learner = meta_learner(loss_fn, opt, mesh=mesh, sample=family.sample)  # doctest: +SKIP
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


# The environment variables a multi-process launch sets on every host (one command per host):
#   JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0|1
# (JAX itself reads only the first; SLURM and Open MPI launches are detected by JAX instead.)
DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# How many of the visible devices the experiments split tasks over (default: all of them).
DEVICES_ENV = "MTPJAX_DEVICES"
# The size of the "model" axis that splits large parameters (default 1: replicated).
MODEL_ENV = "MTPJAX_MODEL_SHARDS"


def initialize_from_env(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Starts JAX's multi-process runtime when the environment describes a multi-process launch.

  Either the three variables of DISTRIBUTED_ENV (a launch by hand, one command per host), or a
  SLURM / Open MPI job of more than one task (JAX detects its coordinator and ranks). Returns
  whether the runtime is (now) initialised; a single process with none of them set is left
  alone. Half of the three variables is a clear error naming the missing ones.
  """
  environ = os.environ if environ is None else environ
  if jax.distributed.is_initialized():
    return True
  given = {k: environ.get(k) for k in DISTRIBUTED_ENV}
  if any(v is not None for v in given.values()):
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise ValueError(f"a multi-process launch needs all of {', '.join(DISTRIBUTED_ENV)}; "
                       f"{', '.join(missing)} not set")
    try:
      num, pid = int(given["JAX_NUM_PROCESSES"]), int(given["JAX_PROCESS_ID"])
    except ValueError:
      raise ValueError(f"JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, got "
                       f"{given['JAX_NUM_PROCESSES']!r} and {given['JAX_PROCESS_ID']!r}") from None
    if not 0 <= pid < num:
      raise ValueError(f"JAX_PROCESS_ID={pid} must be in [0, JAX_NUM_PROCESSES={num})")
    jax.distributed.initialize(given["JAX_COORDINATOR_ADDRESS"], num_processes=num,
                               process_id=pid)
    return True
  if int(environ.get("SLURM_NTASKS", "1")) > 1 or int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    jax.distributed.initialize()
    return True
  return False


def mesh_from_env(num_tasks: int, what: str = "meta_batch_size",
                  environ: Optional[Mapping[str, str]] = None) -> Optional[jax.sharding.Mesh]:
  """The task mesh an experiment runs on: every device of every process, or the first
  $MTPJAX_DEVICES of them on one process; None when that is a single device. With
  $MTPJAX_MODEL_SHARDS=M, a ("tasks", "model") mesh whose "model" axis of M devices splits
  the large parameters and their optimizer state (`task_mesh(model=M)`).

  `num_tasks` must divide over the devices of the "tasks" axis: otherwise a clear error naming
  both numbers, a size that does, and how to use fewer devices.
  """
  environ = os.environ if environ is None else environ
  devices = jax.devices()

  def integer(name):
    try:
      return int(environ[name])
    except ValueError:
      raise ValueError(f"{name} must be an integer, got {environ[name]!r}") from None

  model = integer(MODEL_ENV) if environ.get(MODEL_ENV) else 1
  if environ.get(DEVICES_ENV):
    n = integer(DEVICES_ENV)
    if not 1 <= n <= len(devices):
      raise ValueError(f"{DEVICES_ENV}={n}: this run sees {len(devices)} device(s)")
    if jax.process_count() > 1 and n != len(devices):
      raise ValueError(f"{DEVICES_ENV}={n}: a run of {jax.process_count()} processes uses all "
                       f"their {len(devices)} devices; unset {DEVICES_ENV}")
    devices = devices[:n]
  if model < 1 or len(devices) % model:
    raise ValueError(f"{MODEL_ENV}={model} must be a positive divisor of the {len(devices)} "
                     f"device(s) this run uses")
  if len(devices) == 1:
    return None
  mesh = task_mesh(devices, model=model)
  try:
    check_mesh(mesh, num_tasks, what)
  except ValueError as e:
    fewer = ("" if jax.process_count() > 1 else
             f", or set {DEVICES_ENV} to a divisor of {num_tasks} to use fewer devices")
    raise ValueError(f"{e}{fewer}") from None
  return mesh


def describe(mesh: Optional[jax.sharding.Mesh]) -> dict:
  """What results.json records about where a run ran."""
  return {"processes": jax.process_count(), "process_devices": jax.local_device_count(),
          "mesh": None if mesh is None else dict(mesh.shape)}


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

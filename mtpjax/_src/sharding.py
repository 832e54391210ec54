"""Tasks of a meta-batch split over the devices of a mesh, with jit and shardings (no pmap).

The meta-parameters are replicated and the tasks are split along the mesh axis "tasks": the
per-task keys are constrained to that axis inside the jitted step, so each device samples,
adapts and differentiates its own tasks, and the mean over tasks becomes one all-reduce that
XLA inserts. Task i is drawn from the same key whatever the device count, so the same seed
gives the same meta-batch on 1 or N devices.

The same code runs on several processes (hosts): `initialize_from_env` starts
jax.distributed from a launch's environment, `mesh_from_env` is the experiments' mesh, and
`replicate` / `local_copy` move replicated state between one process's arrays and global ones.
"""

import os
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

TASK_AXIS = "tasks"


def task_mesh(devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: every device of every process) named "tasks".

  Its axis type is Auto, so the step places tasks with sharding constraints and XLA
  partitions the rest.

  >>> mesh = task_mesh()                                                     # doctest: +SKIP
  >>> learner = meta_learner(loss_fn, opt, mesh=mesh, sample=family.sample)  # doctest: +SKIP
  """
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (TASK_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


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


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places every array of `tree` on every device of the mesh (the meta-parameters).

  On several processes each one holds the same values (the same seed built them) and places
  its copy on its own devices, which make one global array.
  """
  sharding = NamedSharding(mesh, PartitionSpec())
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)

  def one(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree.map(one, tree)


# The environment variables a multi-process launch sets on every host (one command per host):
#   JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0|1
# (JAX itself reads only the first; SLURM and Open MPI launches are detected by JAX instead.)
DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# How many of the visible devices the experiments split tasks over (default: all of them).
DEVICES_ENV = "MTPJAX_DEVICES"


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
  $MTPJAX_DEVICES of them on one process; None when that is a single device.

  `num_tasks` must divide over the devices: otherwise a clear error naming both numbers, a
  size that does, and how to use fewer devices.
  """
  environ = os.environ if environ is None else environ
  devices = jax.devices()
  if environ.get(DEVICES_ENV):
    try:
      n = int(environ[DEVICES_ENV])
    except ValueError:
      raise ValueError(f"{DEVICES_ENV} must be an integer, got {environ[DEVICES_ENV]!r}") from None
    if not 1 <= n <= len(devices):
      raise ValueError(f"{DEVICES_ENV}={n}: this run sees {len(devices)} device(s)")
    if jax.process_count() > 1 and n != len(devices):
      raise ValueError(f"{DEVICES_ENV}={n}: a run of {jax.process_count()} processes uses all "
                       f"their {len(devices)} devices; unset {DEVICES_ENV}")
    devices = devices[:n]
  if len(devices) == 1:
    return None
  mesh = task_mesh(devices)
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
  """A fully replicated (possibly multi-process) pytree as this process's numpy arrays, for
  work every process repeats on its own devices (evaluation, plots)."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        raise ValueError(f"local_copy: an array of shape {x.shape} is split over processes "
                         f"({x.sharding}); only replicated arrays can be copied locally")
      return np.asarray(x.addressable_data(0))
    return x
  return jax.tree.map(one, tree)

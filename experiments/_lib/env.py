"""Everything the experiments read from the environment, in one place.

  MTPJAX_DATA_DIR            the data directory (default: ../shared/data beside this checkout)
  MTPJAX_DEVICES             how many of the visible devices a run splits its tasks over
  MTPJAX_MODEL_SHARDS        the size of a second mesh axis "model" that splits large arrays
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
                             a multi-process launch by hand (SLURM / Open MPI: detected by JAX)

The library (mtpjax) reads none of them: it takes a mesh and paths as arguments.
"""

import os
import warnings
from typing import Mapping, Optional

import jax

from mtpjax import check_mesh, task_mesh

DATA_ENV = "MTPJAX_DATA_DIR"
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
  """What results.json records about where a run ran: backend, devices, processes, mesh,
  versions and XLA flags."""
  return {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "processes": jax.process_count(), "process_devices": jax.local_device_count(),
          "mesh": None if mesh is None else dict(mesh.shape), "jax_version": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}  # as this process started XLA with


def data_dir() -> str:
  """$MTPJAX_DATA_DIR, else ../shared/data beside this checkout."""
  if os.environ.get(DATA_ENV):
    return os.environ[DATA_ENV]
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(os.path.dirname(repo), "shared", "data")


def data_file(name: str) -> str:
  """The path of `name` in the data directory (data_dir())."""
  return os.path.join(data_dir(), name)


def apply_xla_flags(extra: Optional[str]) -> None:
  """Append `extra` to $XLA_FLAGS, which XLA reads once, when JAX starts its backend.

  For flags that are a per-experiment choice (config.xla_flags), e.g. the CPU fusion setting
  that takes ~24% off batch-norm Conv4's MAML step (experiments/omniglot/config.py). A flag
  already in $XLA_FLAGS is left as the user set it. Warns instead if the backend has already
  started in this process (then the flags cannot take effect).
  """
  if not extra:
    return
  current = os.environ.get("XLA_FLAGS", "")
  names = {f.split("=")[0] for f in current.split()}
  new = [f for f in extra.split() if f.split("=")[0] not in names]
  if not new:
    return
  from jax._src import xla_bridge  # no public API tells whether the backend has started
  if xla_bridge.backends_are_initialized():
    warnings.warn(f"config.xla_flags {' '.join(new)!r} not applied: JAX's backend has already "
                  "started in this process (set them in $XLA_FLAGS before it starts)")
    return
  os.environ["XLA_FLAGS"] = " ".join([current] + new).strip()

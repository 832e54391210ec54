"""Tasks of a meta-batch split over the devices of a mesh, with jit and shardings (no pmap).

The meta-parameters are replicated and the tasks are split along the mesh axis "tasks": the
per-task keys are constrained to that axis inside the jitted step, so each device samples,
adapts and differentiates its own tasks, and the mean over tasks becomes one all-reduce that
XLA inserts. Task i is drawn from the same key whatever the device count, so the same seed
gives the same meta-batch on 1 or N devices.
"""

from typing import Optional, Sequence

import jax
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
  """Places every array of `tree` on every device of the mesh (the meta-parameters)."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))

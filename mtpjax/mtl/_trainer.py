"""Multi-task training: shared roles, per-task roles, one balanced, jitted, donated step.

Parameters are the usual role-keyed pytree. Roles named in `per_task` (default: "head" and
"prompt") hold one entry per task along a leading axis [T, ...]; every other role is shared.
A step takes one batch per task (a pytree with a leading task axis) and

  - computes every task's loss and its gradients with one jax.vmap over the tasks (the task's
    slice of the per-task roles, the shared roles as they are);
  - combines the shared roles' per-task gradients with a balancing method (mtpjax.mtl), and
    gives each task's own roles its own task's gradient, unweighted, as LibMTL's gradient
    methods do (they balance only the shared parameters): a task whose weight is 0 this step
    (MGDA at a conflict) still trains its head;
  - for a loss-only method (equal, fixed, RLW, uncertainty, DWA, FAMO) takes instead one
    gradient of sum_i w_i L_i, with w from the losses, and no per-task gradients at all (so
    each task's own roles get w_i times their gradient, as LibMTL's loss weighting does);
  - applies any optax optimizer.

Batches come in two layouts: one batch per task (every leaf [T, n, ...]; loss_fn returns the
task's scalar loss), or mixed (`mixed=True`: step(state, (task_ids [n], batch)), loss_fn
returns per-example losses [n], and task t's loss is the mean over its examples; every task's
head sees every example, so this costs T forward passes of the per-task roles).

MGDA-UB (Sener & Koltun 2018) weighs the tasks by their gradients with respect to a shared
representation instead of the shared parameters: pass `represent(params, batch) -> z` and
`head_loss(task_params, z, batch) -> loss` (with loss_fn(p, b) == head_loss(p, represent(p, b), b))
and any gradient method computes its weights from dL_t/dz_t, then the shared roles' step is one
gradient of sum_t w_t L_t (and the per-task roles' the gradient of sum_t L_t, one backward
pass more through the same forward), which costs two backward passes instead of T.

The balancer's state takes the dtype of the trainable parameters (float64 under
jax_enable_x64 with float64 parameters).
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from mtpjax.mtl import _balancers as mtl_lib
from mtpjax._src import hoist as hoist_lib
from mtpjax._src import sharding as sharding_lib
from mtpjax._src import trainer as trainer_lib
from mtpjax._src import types


class MultiTaskTrainer(NamedTuple):
  """init(params, *, key) -> TrainState (extra: the balancer's state); step(state, batches)
  -> (state, metrics), jitted with the state donated (trainer.compile_step); task_params(params,
  t) -> one task's parameters."""

  init: Callable[..., trainer_lib.TrainState]
  step: Callable[..., tuple]
  task_params: Callable[..., types.Params]
  num_tasks: int
  run: Optional[Callable[..., tuple]] = None  # run(state, n): n steps in one call (needs sample)


def _float_dtype(tree):
  """The dtype of a tree's floating leaves (float32 if it has none)."""
  dtypes = [a.dtype for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]
  return jnp.result_type(*dtypes) if dtypes else jnp.float32


# multitask_trainer is long (about 200 lines, 40 of them its docstring and example) as optax's
# factories are: it checks its arguments once and returns closures sharing them (the role
# split, the three ways a step computes its gradients, init); each is short, and the jitted,
# donated step and run are trainer.compile_step's.
def multitask_trainer(loss_fn: Callable[[types.Params, Any], jax.Array],
                      optimizer: optax.GradientTransformation,
                      balancer: mtl_lib.Balancer, *, num_tasks: int,
                      per_task: Sequence[str] = (types.HEAD, types.PROMPT),
                      sample: Optional[Callable[[types.PRNGKey], Any]] = None,
                      mixed: bool = False,
                      frozen: Sequence[str] = (),
                      represent: Optional[Callable[..., Any]] = None,
                      head_loss: Optional[Callable[..., jax.Array]] = None,
                      mesh: Optional[jax.sharding.Mesh] = None,
                      donate: bool = True) -> MultiTaskTrainer:
  """Builds the multi-task step.

  Args:
    loss_fn: loss_fn(task_params, batch) -> scalar for one task, where task_params has the
      shared roles and this task's slice of the per-task roles. Tasks may differ in their
      losses through what the batch carries (e.g. a task id), not in structure.
    optimizer: any optax optimizer over every role.
    balancer: mj.mtl.get(name, ...).
    num_tasks: T, the leading axis of the per-task roles and of the batches.
    per_task: the roles with a leading task axis. Listing "shared" too gives T independent
      models in one step: the single-task baselines, trained side by side.
    sample: sample(key) -> batches, drawn on the device; then step(state) needs no batches and
      run(state, n) takes n steps in one jitted lax.scan.
    mixed: batches are (task_ids [n], batch) and loss_fn returns per-example losses.
    frozen: roles passed to loss_fn unchanged, with no gradient, no optimizer state and no
      balancing (a pretrained encoder under per-task prompts and heads). A role both frozen
      and per_task is sliced by task but not trained (a teacher's heads under a student).
    represent: represent(params, batch) -> z, for MGDA-UB's representation gradients (see the
      module docstring).
    head_loss: head_loss(task_params, z, batch) -> loss, with represent.
    mesh: a device mesh with a "tasks" axis (mj.task_mesh()): the tasks' batches are split
      over it (num_tasks must divide over its devices), the parameters replicated (or their
      large arrays split over a second axis "model", `mj.task_mesh(model=M)`); the step is
      the same computation, partitioned by XLA.

  Two regression tasks on one shared weight vector, each with its own bias (a per-task role,
  [T, ...]):

  >>> import mtpjax as mj
  >>> def loss_fn(p, batch):                        # one task: p["head"] is its own bias
  ...   x, y = batch
  ...   return jnp.mean((x @ p["shared"] + p["head"] - y) ** 2)
  >>> params = {"shared": jnp.zeros(3), "head": jnp.zeros(2)}          # head: [T]
  >>> x = jnp.ones((2, 4, 3))                                           # [T, n, d]
  >>> batches = (x, jnp.stack([jnp.ones(4), -jnp.ones(4)]))             # [T, n]
  >>> trainer = multitask_trainer(loss_fn, optax.sgd(0.1), mj.mtl.get("famo"), num_tasks=2,
  ...                             per_task=("head",))
  >>> state = trainer.init(params, key=jax.random.key(0))
  >>> state, metrics = trainer.step(state, batches)
  >>> metrics["task_losses"], sorted(state.extra)      # extra: FAMO's state, checkpointed
  (Array([1., 1.], dtype=float32), ['min', 'opt', 'prev', 'started', 'w'])
  """
  if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
    raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
  per_task, frozen = tuple(per_task), tuple(frozen)
  if mesh is not None:
    if mixed:
      raise ValueError("multitask_trainer: a mesh splits one batch per task over devices; "
                       "mixed batches have no task axis to split")
    sharding_lib.check_mesh(mesh, num_tasks, "num_tasks")
  if (represent is None) != (head_loss is None):
    raise ValueError("multitask_trainer: representation gradients need both represent and "
                     "head_loss")
  if represent is not None and mixed:
    raise ValueError("multitask_trainer: representation gradients take one batch per task, "
                     "not mixed batches")

  def split(params):
    own = {r: v for r, v in params.items() if r in per_task}
    shared = {r: v for r, v in params.items() if r not in per_task and r not in frozen}
    return shared, own

  def frozen_part(params):  # the frozen roles without a task axis
    return {r: v for r, v in params.items() if r in frozen and r not in per_task}

  def task_params(params, t):
    shared, own = split(params)
    return {**frozen_part(params), **shared, **jax.tree.map(lambda a: a[t], own)}

  def trainable(params):
    return {r: v for r, v in params.items() if r not in frozen}

  def check(params, batches):
    _, own = split(params)
    trees = [("per-task roles", own)]
    if mixed:
      ids, batch = batches if batches else (None, {})
      if ids is not None:
        n = tuple(ids.shape)
        bad = [a.shape for a in jax.tree.leaves(batch) if tuple(a.shape[:1]) != n]
        if len(n) != 1 or not jnp.issubdtype(ids.dtype, jnp.integer) or bad:
          raise ValueError(f"multitask (mixed): batches must be (task_ids [n] integers, batch "
                           f"with leaves [n, ...]); got ids {n} and leaves {bad[:3]}")
    else:
      trees.append(("batches", batches))
    for where, tree in trees:
      bad = [a.shape for a in jax.tree.leaves(tree) if not a.shape or a.shape[0] != num_tasks]
      if bad:
        raise ValueError(f"multitask: every leaf of the {where} needs a leading task axis of "
                         f"{num_tasks}, got shapes {bad[:3]}")

  def init(params, *, key):
    check(params, ())
    params = jax.tree.map(jnp.copy, dict(params))
    # Copies throughout: the step donates the state, so no buffer may appear in it twice (a
    # balancer may put one array in two fields) nor belong to the caller (params, key).
    state = trainer_lib.TrainState(jnp.zeros((), jnp.int32), params,
                                   optimizer.init(trainable(params)), jax.random.clone(key),
                                   extra=jax.tree.map(jnp.copy, balancer.init(
                                       num_tasks, dtype=_float_dtype(trainable(params)))))
    return state if mesh is None else sharding_lib.place(state, mesh)

  def task_loss(t, params, batches, fz):
    """Task t's loss; in the mixed layout, the mean of its examples' losses."""
    # Frozen per-task roles ride along with the task's slice; no gradient reaches them.
    params = {r: (jax.lax.stop_gradient(v) if r in frozen else v)
              for r, v in {**fz, **params}.items()}
    if not mixed:
      return loss_fn(params, batches)
    ids, batch = batches
    member = (ids == t).astype(jnp.float32)
    return jnp.sum(member * loss_fn(params, batch)) / jnp.maximum(jnp.sum(member), 1.0)

  def task_batches(batches):
    """What vmap maps over with the task index: per-task slices, or the whole mixed batch."""
    return (None, batches) if mixed else (0, batches)

  def all_losses(shared, own, batches, fz):
    axis, b = task_batches(batches)
    return jax.vmap(lambda t, o, b: task_loss(t, {**shared, **o}, b, fz),
                    in_axes=(0, 0, axis))(jnp.arange(num_tasks), own, b)

  def weighted_grads(shared, own, batches, weights_of, fz, own_weighted=True):
    """The gradient of sum_t w_t L_t, with w = weights_of(stop_gradient(losses)), for the
    shared roles; for the per-task roles the same (own_weighted) or that of sum_t L_t."""
    losses, vjp = jax.vjp(lambda s, o: all_losses(s, o, batches, fz), shared, own)
    w, aux = weights_of(jax.lax.stop_gradient(losses))
    w = jax.lax.stop_gradient(w).astype(losses.dtype)
    g_shared, g_own = vjp(w)
    if not own_weighted:
      g_own = vjp(jnp.ones_like(losses))[1]
    return losses, aux, g_shared, g_own

  # The sampler's arrays are arguments of the compiled step, not constants baked into it.
  data, draw = hoist_lib.hoist(sample, mesh)

  def step(state, batches=None, data=None):
    if batches is None:
      batches = draw(data, jax.random.fold_in(jax.random.fold_in(state.key, state.step), 1))
    if mesh is not None:  # each device computes its tasks' losses and gradients
      batches = sharding_lib.split_tasks(batches, mesh)
    key = jax.random.fold_in(state.key, state.step)
    shared, own = split(state.params)
    fz = frozen_part(state.params)
    if balancer.loss_only:
      def weights_of(losses):
        w, bstate, info = balancer.weights(losses, state.extra, key)
        return w, (bstate, info)
      losses, (bstate, info), g_shared, g_own = weighted_grads(shared, own, batches, weights_of,
                                                               fz)
    elif represent is not None:
      # MGDA-UB: the balancer sees dL_t/dz_t, the gradients at each task's representation.
      def weights_of(losses):
        def one(o, b):
          z = represent({**fz, **shared, **o}, b)
          return jax.grad(lambda z: head_loss({**fz, **shared, **o}, z, b))(z)
        z_grads = jax.vmap(one)(own, batches)
        _, bstate, info = balancer.update(losses, z_grads, state.extra, key)
        return info["weights"], (bstate, info)
      losses, (bstate, info), g_shared, g_own = weighted_grads(shared, own, batches, weights_of,
                                                               fz, own_weighted=False)
    else:
      axis, b = task_batches(batches)

      def one(t, o, b):
        return jax.value_and_grad(lambda s, o: task_loss(t, {**s, **o}, b, fz),
                                  argnums=(0, 1))(shared, o)
      losses, (task_g_shared, task_g_own) = jax.vmap(one, in_axes=(0, 0, axis))(
          jnp.arange(num_tasks), own, b)
      g_shared, bstate, info = balancer.update(losses, task_g_shared, state.extra, key)
      # Each task's own roles take its own gradient (LibMTL's habit), NaN with the update
      # where the balancer saw a non-finite loss or gradient.
      bad = ~jnp.all(jnp.isfinite(info["weights"]))
      g_own = jax.tree.map(lambda g: jnp.where(bad, jnp.nan, g), task_g_own)
    grads = {**g_shared, **{r: g for r, g in g_own.items() if r not in frozen}}
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable(state.params))
    params = {**state.params, **optax.apply_updates(trainable(state.params), updates)}
    metrics = {"loss": jnp.mean(losses), "task_losses": losses, "weights": info["weights"],
               "grad_norm": optax.tree.norm(grads)}
    # On a "model" axis the updated parameters and moments stay split as they came in.
    params, opt_state = sharding_lib.constrain_params((params, opt_state), mesh)
    return trainer_lib.TrainState(state.step + 1, params, opt_state, state.key, bstate), metrics

  if sample is not None:
    check({}, jax.eval_shape(sample, jax.random.key(0)))
  compiled = trainer_lib.compile_step(
      step, what="multitask_trainer", can_sample=sample is not None, donate=donate, data=data,
      check_batch=lambda state, batches: check(state.params, batches))
  return MultiTaskTrainer(init, compiled.step, task_params, num_tasks, compiled.run)

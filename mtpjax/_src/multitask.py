"""Multi-task training: shared roles, per-task roles, one balanced, jitted, donated step.

Parameters are the usual role-keyed pytree. Roles named in `per_task` (default: "head" and
"prompt") hold one entry per task along a leading axis [T, ...]; every other role is shared.
A step takes one batch per task (a pytree with a leading task axis) and

  - computes every task's loss and its gradients with one jax.vmap over the tasks (the task's
    slice of the per-task roles, the shared roles as they are);
  - combines the shared roles' per-task gradients with a balancing method (mtpjax.mtl), and
    gives each task's own roles its own gradient times its weight, as the gradient of
    sum_i w_i L_i would;
  - for a loss-only method (equal, fixed, RLW, uncertainty, DWA, FAMO) takes instead one
    gradient of sum_i w_i L_i, with w from the losses, and no per-task gradients at all;
  - applies any optax optimizer.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from mtpjax._src import mtl as mtl_lib
from mtpjax._src import types


class MultiTaskState(NamedTuple):
  step: jax.Array
  params: types.Params
  opt_state: Any
  balancer_state: Any
  key: types.PRNGKey


class MultiTaskTrainer(NamedTuple):
  """init(params, *, key) -> MultiTaskState; step(state, batches) -> (state, metrics), jitted
  with the state donated; task_params(params, t) -> one task's parameters."""

  init: Callable[..., MultiTaskState]
  step: Callable[..., tuple]
  task_params: Callable[..., types.Params]
  num_tasks: int


def multitask_trainer(loss_fn: Callable[[types.Params, Any], jax.Array],
                      optimizer: optax.GradientTransformation,
                      balancer: mtl_lib.Balancer, *, num_tasks: int,
                      per_task: Sequence[str] = (types.HEAD, types.PROMPT),
                      donate: bool = True) -> MultiTaskTrainer:
  """Builds the multi-task step.

  Args:
    loss_fn: loss_fn(task_params, batch) -> scalar for one task, where task_params has the
      shared roles and this task's slice of the per-task roles. Tasks may differ in their
      losses through what the batch carries (e.g. a task id), not in structure.
    optimizer: any optax optimizer over every role.
    balancer: mj.mtl.get(name, ...).
    num_tasks: T, the leading axis of the per-task roles and of the batches.
    per_task: the roles with a leading task axis.

  >>> trainer = multitask_trainer(loss_fn, optax.adam(1e-3), mj.mtl.get("famo"),
  ...                             num_tasks=3)                         # doctest: +SKIP
  >>> state = trainer.init(params, key=jax.random.key(0))              # doctest: +SKIP
  >>> state, metrics = trainer.step(state, batches)                    # doctest: +SKIP
  """
  if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
    raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
  per_task = tuple(per_task)

  def split(params):
    own = {r: v for r, v in params.items() if r in per_task}
    shared = {r: v for r, v in params.items() if r not in per_task}
    return shared, own

  def task_params(params, t):
    shared, own = split(params)
    return {**shared, **jax.tree.map(lambda a: a[t], own)}

  def check(params, batches):
    _, own = split(params)
    for where, tree in (("per-task roles", own), ("batches", batches)):
      bad = [a.shape for a in jax.tree.leaves(tree) if not a.shape or a.shape[0] != num_tasks]
      if bad:
        raise ValueError(f"multitask: every leaf of the {where} needs a leading task axis of "
                         f"{num_tasks}, got shapes {bad[:3]}")

  def init(params, *, key):
    check(params, {})
    params = jax.tree.map(jnp.copy, dict(params))
    return MultiTaskState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                          balancer.init(num_tasks), key)

  def per_task_losses(shared, own, batches):
    return jax.vmap(lambda o, b: loss_fn({**shared, **o}, b))(own, batches)

  def step(state, batches):
    key = jax.random.fold_in(state.key, state.step)
    shared, own = split(state.params)
    if balancer.loss_only:
      def total(shared, own):
        losses = per_task_losses(shared, own, batches)
        w, bstate, info = balancer.weights(jax.lax.stop_gradient(losses),
                                           state.balancer_state, key)
        return jnp.sum(w * losses), (losses, bstate, info)
      (_, (losses, bstate, info)), (g_shared, g_own) = jax.value_and_grad(
          total, argnums=(0, 1), has_aux=True)(shared, own)
    else:
      def one(o, b):
        return jax.value_and_grad(lambda s, o: loss_fn({**s, **o}, b), argnums=(0, 1))(shared, o)
      losses, (task_g_shared, task_g_own) = jax.vmap(one)(own, batches)
      g_shared, bstate, info = balancer.update(losses, task_g_shared, state.balancer_state, key)
      w = info["weights"]
      g_own = jax.tree.map(lambda g: g * w.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype),
                           task_g_own)
    grads = {**g_shared, **g_own}
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"task_losses": losses, "weights": info["weights"],
               "grad_norm": optax.tree.norm(grads)}
    return MultiTaskState(state.step + 1, params, opt_state, bstate, state.key), metrics

  compiled = jax.jit(step, donate_argnums=(0,) if donate else ())

  def checked_step(state, batches):
    check(state.params, batches)
    return compiled(state, batches)

  return MultiTaskTrainer(init, checked_step, task_params, num_tasks)

"""meta_learner: the inner loop, the meta-gradient (MAML family or Reptile) and one jitted,
donated outer step built by the trainer core. Which roles adapt is the Algorithm's choice
(mtpjax/meta/_algorithms.py)."""

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from mtpjax._src import hoist as hoist_lib
from mtpjax._src import sharding as sharding_lib
from mtpjax._src import trainer as trainer_lib
from mtpjax._src import types
from mtpjax._src.validate import (check_episode_shapes, check_int, check_outputs_cover_ways,
                                  check_positive)
from mtpjax.meta import _adapt as adapt_lib
from mtpjax.meta._algorithms import Algorithm, fast_roles, get_algorithm, outer_roles


class MetaLearner(NamedTuple):
  """A meta-learning algorithm as pure functions (the optax habit).

  init(params, *, key) -> TrainState
  step(state[, tasks]) -> (state, metrics)      jitted, state donated (trainer.compile_step)
  run(state, num_steps) -> (state, metrics)     num_steps steps in one jitted lax.scan, tasks
                                                sampled on the device; metrics stacked [num_steps]
  adapt(params, support, steps=None, eval_fn=None) -> (adapted, aux)   one task
  task_loss(params, episode) -> (query loss, aux)                       one task
  prepare_episode(params, episode) -> episode   inputs through `prepare` (identity without it)
  """

  init: Callable[..., trainer_lib.TrainState]
  step: Callable[..., tuple[trainer_lib.TrainState, dict]]
  adapt: Callable[..., Any]
  task_loss: Callable[..., Any]
  loss_fn: types.LossFn
  task_repr: Optional[Callable[..., Any]]  # task_repr(params, support), or None
  algorithm: Algorithm
  inner_steps: int
  inner_lr: float
  run: Callable[..., tuple[trainer_lib.TrainState, dict]]
  prepare_episode: Callable[..., Any] = lambda params, episode: episode


# meta_learner is long (about 180 lines, 40 of them its docstring) as optax's factories are:
# it checks its arguments once and returns closures (init, step, adapt, the scanned run) that
# share them; each closure is short, and the step itself is trainer.compile_step's.
def meta_learner(loss_fn: types.LossFn, optimizer: optax.GradientTransformation, *,
                 algorithm: Union[str, Algorithm] = "maml", inner_steps: int = 1,
                 inner_lr: float = 0.01, meta_batch_size: int = 25,
                 sample: Optional[types.SampleFn] = None,
                 remat: Union[bool, str, Callable] = False,
                 unroll: Union[int, bool, str] = "auto", donate: bool = True,
                 jit: bool = True,
                 task_repr: Optional[Callable[[types.Params, types.Batch], Any]] = None,
                 prepare: Optional[Callable[[types.Params, Any], Any]] = None,
                 mesh: Optional[jax.sharding.Mesh] = None
                 ) -> MetaLearner:
  """Builds a meta-learner: the inner loop, the meta-gradient and one jitted outer step.

  Args:
    loss_fn: loss_fn(params, batch) -> scalar for one task's batch.
    optimizer: any optax optimizer for the outer loop.
    algorithm: a name in ALGORITHMS or an Algorithm (see get_algorithm for overrides).
    inner_steps: static number of inner SGD steps during meta-training (0: plain loss).
    inner_lr: inner SGD learning rate (Meta-SGD: the initial per-parameter rate).
    meta_batch_size: tasks per meta-step.
    sample: sample(key) -> Episode for one task. With it, step(state) draws its own tasks
      on the device; without it, step(state, tasks) takes a meta-batch of Episodes.
    remat: an inner-loop memory knob (see adapt): True or a policy name ("dots_saveable",
      ...) trades recomputation for the memory of long inner loops.
    unroll: how the inner loop is traced (see adapt).
    donate: donate the state to the step (its buffers are reused in place).
    jit: compile the step (turn off only to debug).
    task_repr: optional task_repr(params, support) -> representation, computed once per task
      from its support set at the meta-parameters and passed to every loss of that task as
      loss_fn(params, batch, task_repr=r), e.g. for generated prompts conditioned on
      prompts.support_summary of the support set. Gradients reach the parameters through it.
    prepare: optional prepare(params, x) -> x' applied to each task's support and query inputs
      once, before adaptation, e.g. Model.prepare, which computes a frozen encoder's layers
      below a late prompt once per sentence instead of once per inner step. It sees only the
      roles that do not adapt (a cache of an adapting role would be stale: that is an error),
      and gradients reach the meta-learned roles through it.
    mesh: optional device mesh with a "tasks" axis (mj.task_mesh()): the meta-batch is split
      over its devices and the state replicated (on a second axis "model",
      `mj.task_mesh(model=M)`, large arrays are split over it instead), in one jitted step;
      the same seed gives the same tasks and (to float rounding) the same step on any device
      count. meta_batch_size must divide over the "tasks" axis.

  >>> import mtpjax as mj
  >>> family = mj.tasks.sinusoid.family(shots=5, queries=5)
  >>> model = mj.compose(mj.mlp((16,)), mj.linear_head(1))
  >>> params = model.init(jax.random.key(0), jnp.zeros((5, 1)))
  >>> learner = meta_learner(mj.supervised(model.apply, mj.mse), optax.adam(1e-3),
  ...                        meta_batch_size=4, sample=family.sample)
  >>> state = learner.init(params, key=jax.random.key(1))
  >>> state, metrics = learner.run(state, 3)         # 3 meta-steps in one jitted scan
  >>> int(state.step), metrics["loss"].shape
  (3, (3,))
  """
  algo = get_algorithm(algorithm) if isinstance(algorithm, str) else algorithm
  check_int("inner_steps", inner_steps, allow_zero=True)
  check_positive("inner_lr", inner_lr)
  check_int("meta_batch_size", meta_batch_size)
  if algo.rule == "reptile" and inner_steps == 0:
    raise ValueError("reptile needs inner_steps >= 1: with 0 steps its update is zero")
  if algo.rule not in ("maml", "reptile"):
    raise ValueError(f"unknown meta-gradient rule {algo.rule!r}; known: 'maml', 'reptile'")
  if mesh is not None:
    sharding_lib.check_mesh(mesh, meta_batch_size)
  if remat:
    adapt_lib.remat_policy(remat)  # an unknown policy name fails here, not at trace time

  def _lr(params):
    return params[types.INNER_LR] if algo.learn_inner_lr else inner_lr

  def prepare_episode(params, episode):
    if prepare is None:
      return episode
    fast = set(fast_roles(algo, params))
    slow = {r: v for r, v in params.items() if r not in fast}
    try:
      s, q = episode.support, episode.query
      return types.Episode(types.Batch(prepare(slow, s.x), s.y),
                           types.Batch(prepare(slow, q.x), q.y))
    except KeyError as e:
      raise ValueError(f"prepare reads role {e.args[0]!r}, which algorithm {algo.name!r} adapts "
                       f"(fast roles {sorted(fast)}): its per-task cache would be stale; drop "
                       f"prepare or keep that role out of the inner loop") from None

  def bind(params, support):
    """loss_fn with this task's representation bound (itself when there is none)."""
    if task_repr is None:
      return loss_fn
    r = task_repr(params, support)
    return lambda p, batch: loss_fn(p, batch, task_repr=r)

  def adapt_task(params, support, steps=None, eval_fn=None, first_order=None, bound=None):
    return adapt_lib.adapt(
        bound or bind(params, support), params, support, fast=fast_roles(algo, params),
        steps=inner_steps if steps is None else steps, lr=_lr(params),
        first_order=algo.first_order if first_order is None else first_order,
        remat=remat, unroll=unroll, eval_fn=eval_fn)

  def task_loss(params, episode):
    episode = prepare_episode(params, episode)
    bound = bind(params, episode.support)
    adapted, aux = adapt_task(params, episode.support, bound=bound)
    return bound(adapted, episode.query), aux

  def init(params, *, key):
    fast = fast_roles(algo, params)
    adapt_lib.check_roles(params, fast if algo.fast is None else algo.fast,
                          f"algorithm {algo.name!r} adapts")
    if algo.outer is not None and not any(r in params for r in algo.outer):
      raise ValueError(f"algorithm {algo.name!r} meta-learns roles {list(algo.outer)}, none of "
                       f"which is in the parameters (roles {sorted(params)})")
    adapt_lib.check_roles(params, algo.reset, f"algorithm {algo.name!r} resets")
    if sample is not None:
      check_outputs_cover_ways(loss_fn, params, sample, "meta_learner")
    # A copy: the step donates the state, which must not delete the caller's arrays.
    params = jax.tree.map(jnp.copy, dict(params))
    for r in algo.reset:  # never meta-learned, so zero for every task
      params[r] = jax.tree.map(jnp.zeros_like, params[r])
    if algo.learn_inner_lr and types.INNER_LR not in params:
      fast_params, _ = adapt_lib.split_roles(params, fast)
      params[types.INNER_LR] = jax.tree.map(lambda p: jnp.full_like(p, inner_lr), fast_params)
    outer = outer_roles(algo, params)
    if not outer:
      raise ValueError(f"algorithm {algo.name!r} meta-learns nothing: every outer role is reset "
                       f"({list(algo.reset)})")
    outer, _ = adapt_lib.split_roles(params, outer)
    state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                   opt_state=optimizer.init(outer), key=jax.random.clone(key))
    return state if mesh is None else sharding_lib.place(state, mesh)

  def meta_grads(params, tasks):
    outer_params, frozen = adapt_lib.split_roles(params, outer_roles(algo, params))
    if algo.rule == "maml":
      def meta_loss(op):
        losses, aux = jax.vmap(task_loss, in_axes=(None, 0))({**frozen, **op}, tasks)
        return jnp.mean(losses), aux
      (loss, aux), grads = jax.value_and_grad(meta_loss, has_aux=True)(outer_params)
    else:  # Reptile: move toward the mean of the adapted parameters.
      # mean(params - adapted), not params - mean(adapted): where no task moves a parameter
      # (a ReLU unit dead on every task) the direction is then exactly zero, where the other
      # form leaves float32 rounding noise that Adam's first step divides by ~eps.
      def one(ep):
        ep = prepare_episode(params, ep)
        bound = bind(params, ep.support)
        adapted, aux = adapt_task(params, ep.support, bound=bound)
        return adapted, bound(adapted, ep.query), aux
      adapted, losses, aux = jax.vmap(one)(tasks)
      loss = jnp.mean(losses)
      grads = jax.tree.map(lambda p, a: jnp.mean(p[None] - a, axis=0), outer_params,
                           {r: adapted[r] for r in outer_params})
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    if inner_steps > 0:
      metrics["support_loss"] = jnp.mean(aux["support_loss"][:, 0])
    return outer_params, frozen, grads, metrics

  # The sampler's arrays are arguments of the compiled step, not constants baked into it.
  data, draw = hoist_lib.hoist(sample, mesh)

  def step(state: trainer_lib.TrainState, tasks: Optional[types.Episode] = None, data=None):
    if tasks is None:
      keys = jax.random.split(jax.random.fold_in(state.key, state.step), meta_batch_size)
      if mesh is not None:  # each device draws and adapts its own tasks
        keys = sharding_lib.split_tasks(keys, mesh)
      tasks = jax.vmap(lambda k: draw(data, k))(keys)  # Episode with leading axis [tasks]
    elif mesh is not None:
      tasks = sharding_lib.split_tasks(tasks, mesh)
    outer_params, frozen, grads, metrics = meta_grads(state.params, tasks)
    updates, opt_state = optimizer.update(grads, state.opt_state, outer_params)
    outer_params = optax.apply_updates(outer_params, updates)
    # On a "model" axis the updated parameters and moments stay split as they came in.
    params, opt_state = sharding_lib.constrain_params(({**frozen, **outer_params}, opt_state),
                                                      mesh)
    return trainer_lib.TrainState(state.step + 1, params, opt_state, state.key), metrics

  if sample is not None:
    check_episode_shapes(jax.eval_shape(sample, jax.random.key(0)), "sample(key)")
  compiled = trainer_lib.compile_step(
      step, what="meta_learner", can_sample=sample is not None, donate=donate, jit=jit,
      data=data,
      check_batch=lambda state, tasks: check_episode_shapes(tasks, "step(state, tasks)",
                                                            batched=True))

  return MetaLearner(init, compiled.step, adapt_task, task_loss, loss_fn, task_repr, algo,
                     inner_steps, inner_lr, compiled.run, prepare_episode)

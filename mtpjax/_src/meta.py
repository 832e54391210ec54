"""Meta-learning: which roles adapt (a label choice) and how the meta-gradient is computed.

Every algorithm is a row of `ALGORITHMS`:

  fast   which roles the inner loop adapts (None: every role but "inner_lr")
  outer  which roles the outer optimizer updates (None: every role)
  rule   "maml" (differentiate the query loss through adaptation) or "reptile"
  first_order, learn_inner_lr
  reset  roles that start every task from zero and are not meta-learned (e.g. ("head",): the
         "zeroing trick" of Kao et al. 2022, which keeps first-order MAML's head from drifting)

so MAML, first-order MAML, Meta-SGD, ANIL, CAVIA and prompt meta-learning are one code path,
and Reptile is the one algorithm with its own outer rule.
"""

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtpjax._src import adapt as adapt_lib
from mtpjax._src import sharding as sharding_lib
from mtpjax._src import types


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A meta-learning algorithm as a choice over roles and a meta-gradient rule (see the
  module docstring for the fields); ALGORITHMS holds the presets, get_algorithm overrides."""

  name: str
  rule: str = "maml"  # "maml" | "reptile"
  fast: Optional[tuple[str, ...]] = None
  outer: Optional[tuple[str, ...]] = None
  first_order: bool = False
  learn_inner_lr: bool = False
  reset: tuple[str, ...] = ()


ALGORITHMS = {
    "maml": Algorithm("maml"),
    "fomaml": Algorithm("fomaml", first_order=True),
    "metasgd": Algorithm("metasgd", learn_inner_lr=True),
    "anil": Algorithm("anil", fast=(types.HEAD,)),
    # CAVIA: only the context adapts, and it restarts from zero for every task, so the outer
    # loop leaves it out.
    "cavia": Algorithm("cavia", fast=(types.PROMPT,),
                       outer=(types.SHARED, types.HEAD, types.PROMPT_SHARED)),
    # MetaPrompting-style: only the prompt adapts, and its initialisation is meta-learned.
    "prompt_maml": Algorithm("prompt_maml", fast=(types.PROMPT,)),
    "reptile": Algorithm("reptile", rule="reptile"),
}


def get_algorithm(name: str, *, fast: Optional[Sequence[str]] = None,
                  outer: Optional[Sequence[str]] = None,
                  first_order: Optional[bool] = None,
                  reset: Optional[Sequence[str]] = None) -> Algorithm:
  """Looks up a preset by name and optionally overrides what adapts and what is meta-learned.

  reset: roles that start every task from zero instead of a meta-learned initialisation
  (they must be among the roles that adapt, else they would stay zero).
  """
  if name not in ALGORITHMS:
    raise ValueError(f"unknown algorithm {name!r}; known: {sorted(ALGORITHMS)}")
  algo = ALGORITHMS[name]
  for roles, what in ((fast, "fast"), (outer, "outer"), (reset, "reset")):
    if roles is not None:
      bad = [r for r in roles if r not in types.ROLES]
      if bad or not roles:
        raise ValueError(f"{what} roles must be a non-empty subset of {types.ROLES}, got {roles!r}")
  algo = dataclasses.replace(
      algo,
      fast=tuple(fast) if fast is not None else algo.fast,
      outer=tuple(outer) if outer is not None else algo.outer,
      first_order=algo.first_order if first_order is None else bool(first_order),
      reset=tuple(reset) if reset is not None else algo.reset)
  if algo.fast is not None and any(r not in algo.fast for r in algo.reset):
    raise ValueError(f"reset roles {list(algo.reset)} must adapt (fast roles "
                     f"{list(algo.fast)}): a role reset to zero that never adapts stays zero")
  if types.INNER_LR in algo.reset:
    raise ValueError("the inner learning rates cannot be reset to zero")
  return algo


def fast_roles(algo: Algorithm, params: types.Params) -> tuple[str, ...]:
  if algo.fast is not None:
    return tuple(r for r in algo.fast if r in params)
  return tuple(r for r in params if r != types.INNER_LR)


def outer_roles(algo: Algorithm, params: types.Params) -> tuple[str, ...]:
  if algo.outer is not None:
    roles = tuple(r for r in algo.outer if r in params and r not in algo.reset)
  else:
    roles = tuple(r for r in params if r not in algo.reset)
  if algo.learn_inner_lr and types.INNER_LR not in roles and types.INNER_LR in params:
    roles += (types.INNER_LR,)
  return roles


class MetaState(NamedTuple):
  """Everything a meta-training run needs to continue: checkpoint this and nothing else."""

  step: jax.Array       # int32 scalar: meta-steps taken
  params: types.Params  # every role, meta-learned or not
  opt_state: Any        # outer optimizer state, over the outer roles only
  key: types.PRNGKey    # root key; step keys are fold_in(key, step)


class MetaLearner(NamedTuple):
  """A meta-learning algorithm as pure functions (the optax habit).

  init(params, *, key) -> MetaState
  step(state[, tasks]) -> (state, metrics)      jitted, state donated
  run(state, num_steps) -> (state, metrics)     num_steps steps in one jitted lax.scan, tasks
                                                sampled on the device; metrics stacked [num_steps]
                                                (num_steps=1 calls step: one executable)
  adapt(params, support, steps=None, eval_fn=None) -> (adapted, aux)   one task
  task_loss(params, episode) -> (query loss, aux)                       one task
  prepare_episode(params, episode) -> episode   inputs through `prepare` (identity without it)
  """

  init: Callable[..., MetaState]
  step: Callable[..., tuple[MetaState, dict]]
  adapt: Callable[..., Any]
  task_loss: Callable[..., Any]
  loss_fn: types.LossFn
  task_repr: Optional[Callable[..., Any]]  # task_repr(params, support), or None
  algorithm: Algorithm
  inner_steps: int
  inner_lr: float
  run: Callable[..., tuple[MetaState, dict]]
  prepare_episode: Callable[..., Any] = lambda params, episode: episode


def _check_int(name, value, allow_zero=False):
  """A static count (steps, tasks): a Python int (not a bool or a float like 1.5)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
  _check_positive(name, value, allow_zero)


def _check_positive(name, value, allow_zero=False):
  ok = value >= 0 if allow_zero else value > 0
  if not ok or (isinstance(value, float) and not math.isfinite(value)):
    raise ValueError(f"{name} must be {'>= 0' if allow_zero else 'positive'}, got {value!r}")


def check_outputs_cover_ways(loss_fn, params, sample, what: str) -> None:
  """A classifier with fewer outputs than a task family's ways would see labels past its last
  class (NaN loss, chance accuracy, no error): checked from shapes alone, before compiling.

  Applies when `sample` is a family's bound method with a `ways` field, its labels are
  integers, and `loss_fn` was made by `supervised` (it records the model's apply).
  """
  ways = getattr(getattr(sample, "__self__", None), "ways", None)
  apply = getattr(loss_fn, "model_apply", None)
  if ways is None or apply is None:
    return
  ep = jax.eval_shape(sample, jax.random.key(0))
  if not jnp.issubdtype(ep.support.y.dtype, jnp.integer):
    return
  try:
    out = jax.eval_shape(apply, params, ep.support.x)
  except Exception:  # e.g. a model that needs a task representation: nothing to check here
    return
  if out.ndim >= 1 and out.shape[-1] < ways:
    raise ValueError(f"{what}: the model gives {out.shape[-1]} outputs per example, but the "
                     f"task family's episodes have ways={ways} (labels 0..{ways - 1}); build "
                     f"the head with {ways} outputs, e.g. linear_head({ways})")


def check_episode_shapes(episode: Any, what: str = "episode", *, batched: bool = False) -> None:
  """Raises a clear error when support and query disagree in anything but their length.

  With batched=True, every array has a leading task axis, which must agree everywhere.
  """
  s, q = episode.support, episode.query
  n = 1 if batched else 0  # the example axis
  # x may be a pytree (e.g. token ids with cached hidden states): every leaf is checked.
  leaves = {}
  for part, batch in (("support", s), ("query", q)):
    for field in ("x", "y"):
      flat, tree = jax.tree_util.tree_flatten_with_path(getattr(batch, field))
      leaves[part, field] = (flat, tree)
  if batched:
    sizes = {a.shape[0] for flat, _ in leaves.values() for _, a in flat}
    if len(sizes) != 1:
      raise ValueError(f"{what}: the leading task axis differs between arrays: {sorted(sizes)}")
  for field in ("x", "y"):
    (fs, ts), (fq, tq) = leaves["support", field], leaves["query", field]
    if ts != tq:
      raise ValueError(f"{what}: support.{field} and query.{field} differ in structure: "
                       f"{ts} vs {tq}")
    for (path, a), (_, b) in zip(fs, fq):
      name = field + jax.tree_util.keystr(path)
      if a.shape[n + 1:] != b.shape[n + 1:] or a.dtype != b.dtype:
        raise ValueError(f"{what}: support.{name} {a.shape} {a.dtype} and query.{name} "
                         f"{b.shape} {b.dtype} must agree in every dimension but the example "
                         f"axis")
      if a.shape[n] == 0 or b.shape[n] == 0:
        raise ValueError(f"{what}: empty support or query set ({name}: {a.shape}, {b.shape})")
  for part in ("support", "query"):
    counts = {a.shape[n] for field in ("x", "y") for _, a in leaves[part, field][0]}
    if len(counts) != 1:
      raise ValueError(f"{what}: x and y must have the same number of examples, got {part} "
                       f"sizes {sorted(counts)}")


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
    remat, unroll: inner-loop memory/speed knobs (see adapt): remat=True or a policy name
      ("dots_saveable", ...) trades recomputation for the memory of long inner loops.
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

  >>> learner = meta_learner(loss_fn, optax.adam(1e-3), sample=family.sample)  # doctest: +SKIP
  >>> state = learner.init(params, key=jax.random.key(0))                      # doctest: +SKIP
  >>> state, metrics = learner.step(state)                                     # doctest: +SKIP
  """
  algo = get_algorithm(algorithm) if isinstance(algorithm, str) else algorithm
  _check_int("inner_steps", inner_steps, allow_zero=True)
  _check_positive("inner_lr", inner_lr)
  _check_int("meta_batch_size", meta_batch_size)
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
    state = MetaState(step=jnp.zeros((), jnp.int32), params=params,
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

  def step(state: MetaState, tasks: Optional[types.Episode] = None):
    if tasks is None:
      if sample is None:
        raise ValueError("step(state) needs `sample` at construction; else call step(state, tasks)")
      keys = jax.random.split(jax.random.fold_in(state.key, state.step), meta_batch_size)
      if mesh is not None:  # each device draws and adapts its own tasks
        keys = sharding_lib.split_tasks(keys, mesh)
      tasks = jax.vmap(sample)(keys)  # Episode with leading axis [tasks]
    elif mesh is not None:
      tasks = sharding_lib.split_tasks(tasks, mesh)
    outer_params, frozen, grads, metrics = meta_grads(state.params, tasks)
    updates, opt_state = optimizer.update(grads, state.opt_state, outer_params)
    outer_params = optax.apply_updates(outer_params, updates)
    # On a "model" axis the updated parameters and moments stay split as they came in.
    params, opt_state = sharding_lib.constrain_params(({**frozen, **outer_params}, opt_state),
                                                      mesh)
    return MetaState(state.step + 1, params, opt_state, state.key), metrics

  def run(state: MetaState, num_steps: int):
    # One executable for many steps: XLA allocates its temporaries once per call, not once per
    # step. On the CPU, with glibc's malloc, per-step allocation page-faults in every
    # temporary afresh (1.3 M faults per Omniglot step with 15 queries per class);
    # benchmarks/omniglot_speed_notes.md row 20 has the figures.
    return jax.lax.scan(lambda carry, _: step(carry), state, None, length=num_steps)

  if sample is not None:
    check_episode_shapes(jax.eval_shape(sample, jax.random.key(0)), "sample(key)")
  compiled = jax.jit(step, donate_argnums=(0,) if donate else ()) if jit else step
  compiled_run = (jax.jit(run, static_argnums=(1,), donate_argnums=(0,) if donate else ())
                  if jit else run)

  def checked_run(state: MetaState, num_steps: int):
    if sample is None:
      raise ValueError("run(state, num_steps) samples its own tasks: build the learner with "
                       "`sample`, or call step(state, tasks) once per meta-batch")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
      raise ValueError(f"run: num_steps must be a positive int, got {num_steps!r}")
    if num_steps == 1:  # the step's own executable, not a scan of length 1
      state, metrics = compiled(state)
      return state, jax.tree.map(lambda m: m[None], metrics)
    return compiled_run(state, num_steps)

  def checked_step(state: MetaState, tasks: Optional[types.Episode] = None):
    if tasks is not None:  # shapes are static: checked in Python before any tracing
      check_episode_shapes(tasks, "step(state, tasks)", batched=True)
      return compiled(state, tasks)
    return compiled(state)

  return MetaLearner(init, checked_step, adapt_task, task_loss, loss_fn, task_repr, algo,
                     inner_steps, inner_lr, checked_run, prepare_episode)

"""Evaluation: adapt on each held-out task's support set, score its query set at every step."""

import math
import warnings
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtpjax.meta import _learner as meta_lib
from mtpjax._src import hoist as hoist_lib
from mtpjax._src import types, validate


def mean_ci95(values) -> tuple[float, float]:
  """Mean and half-width of the normal 95% interval, 1.96 * std / sqrt(n) (std with ddof=1).

  One value has no spread to estimate: its half-width is NaN, with a warning, never a
  reassuring 0.
  """
  v = np.asarray(values, np.float64).reshape(-1)
  if v.size == 0:
    raise ValueError("mean_ci95: no values")
  if v.size == 1:
    warnings.warn("mean_ci95: one value has no confidence interval (NaN); evaluate on more "
                  "tasks (e.g. config.eval_tasks >= 2)", stacklevel=2)
    return float(v[0]), float("nan")
  return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(v.size))


class EvalResult(NamedTuple):
  """Per-task metric trajectories from evaluate(): per_task[name] is [num_tasks, columns], the
  metric after each inner-step count of `measured` (0..max unless every_step=False);
  summary() and curve() give means and 95% CIs."""

  per_task: dict    # metric name -> np.ndarray [num_tasks, len(measured)]
  inner_steps: tuple
  measured: Optional[tuple] = None  # the step count of each column; None: 0..max

  def steps(self) -> tuple:
    """The inner-step counts of the columns of per_task."""
    if self.measured is not None:
      return tuple(self.measured)
    return tuple(range(next(iter(self.per_task.values())).shape[1]))

  def column(self, metric: str, steps: int) -> np.ndarray:
    """The per-task values of `metric` after `steps` inner steps."""
    measured = self.steps()
    if steps not in measured:
      raise ValueError(f"EvalResult: {steps} inner steps were not measured (measured: "
                       f"{list(measured)})")
    return self.per_task[metric][:, measured.index(steps)]

  def summary(self, steps: Optional[Sequence[int]] = None) -> dict:
    """{metric: {steps: (mean, ci95)}} for each listed inner-step count."""
    steps = self.inner_steps if steps is None else steps
    return {m: {s: mean_ci95(self.column(m, s)) for s in steps} for m in self.per_task}

  def curve(self, metric: str):
    """(mean, ci95) arrays over the measured inner-step counts (self.steps()) for one metric."""
    v = self.per_task[metric]
    stats = np.array([mean_ci95(v[:, i]) for i in range(v.shape[1])])
    return stats[:, 0], stats[:, 1]


def make_evaluator(learner: meta_lib.MetaLearner, sample: types.SampleFn, *,
                   max_steps: int, metrics: Optional[dict[str, types.LossFn]] = None,
                   batch_size: int = 100, at: Optional[Sequence[int]] = None) -> Callable:
  """A compiled evaluator: evaluator(params, key, num_tasks) -> per-task metric trajectories.

  One compilation serves every call (params and key are traced), so periodic evaluation during
  training costs no recompiles. Tasks are processed `batch_size` at a time under vmap.
  at: measure only after these inner-step counts (sorted, the last = max_steps) instead of
  after every step: the query set is then scored len(at) times, not max_steps + 1 (with 25
  queries against 5 support examples, most of a 10-step evaluation's cost).
  """
  validate.check_positive("max_steps", max_steps, allow_zero=True)
  validate.check_positive("batch_size", batch_size)
  metrics = metrics or {"loss": learner.loss_fn}
  # The family's arrays are arguments of the compiled chunk, not constants baked into it.
  data, draw = hoist_lib.hoist(sample)

  def one_task(params, data, key):
    episode = learner.prepare_episode(params, draw(data, key))
    kw = {}
    if learner.task_repr is not None:  # the task's representation reaches every metric
      kw["task_repr"] = learner.task_repr(params, episode.support)
    eval_fn = lambda p: {name: fn(p, episode.query, **kw) for name, fn in metrics.items()}
    if at is None:
      _, aux = learner.adapt(params, episode.support, steps=max_steps, eval_fn=eval_fn,
                             first_order=True)
      return aux["trajectory"]  # {name: [max_steps + 1]}
    # SGD has no state but the parameters, so the inner loop runs in segments between the
    # measured counts, with the loss bound once to this task's representation at `params`.
    bound = learner.loss_fn if not kw else (
        lambda p, batch: learner.loss_fn(p, batch, **kw))
    outs, done = [], 0
    for s in at:
      if s > done:
        params, _ = learner.adapt(params, episode.support, steps=s - done, first_order=True,
                                  bound=bound)
        done = s
      outs.append(eval_fn(params))
    return jax.tree.map(lambda *o: jnp.stack(o), *outs)  # {name: [len(at)]}

  @jax.jit
  def chunk(params, data, keys):
    return jax.vmap(one_task, in_axes=(None, None, 0))(params, data, keys)

  def evaluator(params, key, num_tasks):
    validate.check_positive("num_tasks", num_tasks)
    for name, fn in metrics.items():
      validate.check_outputs_cover_ways(fn, params, sample, f"evaluate (metric {name!r})")
    n_chunks = -(-num_tasks // batch_size)
    # Task i is drawn from split(key, num_tasks)[i] whatever the batch size; the last chunk is
    # padded with repeats of the last key, and the padding is dropped below.
    keys = jax.random.split(key, num_tasks)
    pad = n_chunks * batch_size - num_tasks
    keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, axis=0)]).reshape(n_chunks, batch_size)
    outs = [jax.device_get(chunk(params, data, keys[i])) for i in range(n_chunks)]
    return {name: np.concatenate([o[name] for o in outs])[:num_tasks] for name in metrics}

  return evaluator


def evaluate(learner: meta_lib.MetaLearner, params: types.Params, sample: types.SampleFn, *,
             key: types.PRNGKey, num_tasks: int = 600, inner_steps: Sequence[int] = (0, 1, 10),
             metrics: Optional[dict[str, types.LossFn]] = None,
             batch_size: int = 100, every_step: bool = True) -> EvalResult:
  """Adapts once per task for max(inner_steps) steps and records the query metrics on the way.

  Args:
    learner: supplies the inner loop (its fast roles, learning rates, Meta-SGD rates).
    params: meta-learned parameters.
    sample: sample(key) -> Episode for held-out tasks (support to adapt on, query to score).
    key: the tasks drawn depend only on this key, so runs are compared on the same tasks.
    num_tasks: held-out tasks (600 in the papers).
    inner_steps: the step counts to report; all of 0..max are recorded.
    metrics: {name: metric_fn(params, batch) -> scalar}; default {"loss": learner.loss_fn}.
    every_step: record the metrics after every step 0..max (a curve); False: only after the
      listed counts (cheaper when the query set is larger than the support set).

  Returns:
    EvalResult; .summary() gives {metric: {steps: (mean, ci95)}}.

  >>> import optax, mtpjax as mj
  >>> model = mj.compose(mj.mlp((16,)), mj.linear_head(1))
  >>> params = model.init(jax.random.key(0), jnp.zeros((5, 1)))
  >>> learner = mj.meta_learner(mj.supervised(model.apply, mj.mse), optax.adam(1e-3))
  >>> test = mj.tasks.sinusoid.family(shots=5, queries=20)
  >>> res = evaluate(learner, params, test.sample, key=jax.random.key(1), num_tasks=8,
  ...                inner_steps=(0, 1))
  >>> sorted(res.summary()["loss"])             # {steps: (mean, 95% CI)} over 8 tasks
  [0, 1]
  """
  validate.check_int("num_tasks", num_tasks)
  validate.check_int("batch_size", batch_size)
  bad = [s for s in inner_steps if isinstance(s, bool) or not isinstance(s, (int, np.integer))]
  if bad or not list(inner_steps) or min(inner_steps) < 0:
    raise ValueError(f"inner_steps must be a non-empty list of integer counts >= 0, got "
                     f"{inner_steps!r}")
  inner_steps = tuple(sorted(set(int(s) for s in inner_steps)))
  evaluator = make_evaluator(learner, sample, max_steps=inner_steps[-1], metrics=metrics,
                             batch_size=min(batch_size, num_tasks),
                             at=None if every_step else inner_steps)
  return EvalResult(evaluator(params, key, num_tasks), inner_steps,
                    None if every_step else inner_steps)

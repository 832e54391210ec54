"""Per-task metrics and Δm, the multi-task headline: how a model compares with single-task ones.

Classification metrics come from a confusion matrix (one jittable function, then plain
arithmetic), so they can be summed over evaluation batches before the ratios are taken.

Δm has two conventions in the literature, and tables must say which they use:

  - "libmtl" (LibMTL's `count_improvement`, Lin & Zhang 2023): each task's metrics are
    averaged first, then the tasks; positive means better than the baselines.
        Δm = 100/T sum_t 1/M_t sum_m s_tm (N_tm - B_tm) / B_tm,   s = +1 if higher is better
  - "mean" (Maninis et al. 2019, used by Nash-MTL, CAGrad and FAMO): one average over every
    metric of every task; lower means better.
        Δm = 100/K sum_k (-1)^{higher_k} (N_k - B_k) / B_k

With one metric per task they differ only in sign; with several they also weight differently.
"""

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mtpjax._src import types

CONVENTIONS = ("libmtl", "mean")


def confusion_matrix(predictions: types.Array, labels: types.Array,
                     num_classes: int) -> types.Array:
  """[num_classes, num_classes] counts, rows the true class, columns the predicted one.

  predictions: [n] integer classes, or [n, c] logits / probabilities (their arg-max is taken).
  labels: [n] integers in [0, num_classes). Jittable; out-of-range entries count nowhere.
  """
  predictions = jnp.asarray(predictions)
  if predictions.ndim == 2:
    predictions = jnp.argmax(predictions, axis=-1)
  labels = jnp.asarray(labels)
  if predictions.shape != labels.shape or labels.ndim != 1:
    raise ValueError(f"confusion_matrix: predictions {predictions.shape} (after the arg-max) and "
                     f"labels {labels.shape} must both be [n]")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"confusion_matrix: labels must be integers, got {labels.dtype}")
  onehot_true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)       # [n, c]
  onehot_pred = jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32)  # [n, c]
  return onehot_true.T @ onehot_pred


def classification_metrics(confusion) -> dict:
  """Accuracy and macro-averaged precision, recall and F1 from a confusion matrix.

  As scikit-learn's `average="macro"` with `zero_division=0`: the average is over the classes
  that occur among the labels or the predictions; a class never predicted has precision 0, and
  F1 is each class's harmonic mean of its precision and recall, then averaged.
  """
  cm = np.asarray(confusion, dtype=np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"classification_metrics: need a square confusion matrix, got {cm.shape}")
  tp = np.diag(cm)
  true = cm.sum(axis=1)   # support of each class
  pred = cm.sum(axis=0)   # how often each class was predicted
  present = (true + pred) > 0

  def ratio(a, b):
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

  precision, recall = ratio(tp, pred), ratio(tp, true)
  f1 = ratio(2 * precision * recall, precision + recall)
  total = cm.sum()
  return {
      "accuracy": float(tp.sum() / total) if total else float("nan"),
      "precision": float(precision[present].mean()) if present.any() else float("nan"),
      "recall": float(recall[present].mean()) if present.any() else float("nan"),
      "f1": float(f1[present].mean()) if present.any() else float("nan"),
  }


def delta_m(results: Mapping[str, Mapping[str, float]],
            baselines: Mapping[str, Mapping[str, float]],
            higher_is_better: Mapping[str, bool], *, convention: str) -> float:
  """Δm in percent of `results` against the single-task `baselines` (see the module docstring).

  Args:
    results: {task: {metric: value}}.
    baselines: {task: {metric: value}} (the single-task models), the same tasks and metrics.
    higher_is_better: {metric: bool}, e.g. {"accuracy": True, "mse": False}.
    convention: "libmtl" (positive = better) or "mean" (lower = better).

  >>> delta_m({"a": {"acc": 0.9}}, {"a": {"acc": 0.8}}, {"acc": True},
  ...         convention="libmtl")  # doctest: +ELLIPSIS
  12.5...
  """
  if convention not in CONVENTIONS:
    raise ValueError(f"delta_m: convention must be one of {CONVENTIONS}, got {convention!r}")
  if set(results) != set(baselines) or not results:
    raise ValueError(f"delta_m: results and baselines need the same, non-empty tasks: "
                     f"{sorted(results)} vs {sorted(baselines)}")
  per_task, flat = [], []
  for task in sorted(results):
    if set(results[task]) != set(baselines[task]) or not results[task]:
      raise ValueError(f"delta_m: task {task!r} has metrics {sorted(results[task])} but its "
                       f"baseline has {sorted(baselines[task])}")
    rel = []
    for metric in sorted(results[task]):
      if metric not in higher_is_better:
        raise ValueError(f"delta_m: say whether higher is better for {metric!r} "
                         f"(higher_is_better={dict(higher_is_better)})")
      base = float(baselines[task][metric])
      if base == 0:
        raise ValueError(f"delta_m: the baseline of {task!r}/{metric!r} is 0: relative change "
                         f"is undefined")
      sign = 1.0 if higher_is_better[metric] else -1.0
      rel.append(sign * (float(results[task][metric]) - base) / base)  # + = better
    per_task.append(float(np.mean(rel)))
    flat.extend(rel)
  if convention == "libmtl":
    return 100.0 * float(np.mean(per_task))
  return -100.0 * float(np.mean(flat))


def delta_m_both(results, baselines, higher_is_better) -> dict:
  """{"libmtl": ..., "mean": ...}: both conventions, for tables that report either."""
  return {c: delta_m(results, baselines, higher_is_better, convention=c) for c in CONVENTIONS}


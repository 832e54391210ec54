"""Losses and metrics over one batch, and the bridge from (apply, loss) to a LossFn."""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtpjax._src import types


def mse(pred: types.Array, target: types.Array) -> types.Array:
  """Mean squared error over every element. pred, target: the same shape, e.g. [n, d].

  Shapes must match exactly: [n, 1] against [n] would broadcast to [n, n] and train on a
  different loss, so it is an error (checked at trace time, free per step).
  """
  if jnp.shape(pred) != jnp.shape(target):
    raise ValueError(f"mse: predictions {jnp.shape(pred)} and targets {jnp.shape(target)} must "
                     f"have the same shape (they would broadcast to a different loss); reshape "
                     f"the targets, e.g. y[:, None] for a model with one output")
  return jnp.mean(jnp.square(pred - target))


def _check_labels(fn, logits, labels):
  if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
    raise ValueError(f"{fn}: labels must be integers (class indices), got dtype "
                     f"{jnp.asarray(labels).dtype}; for one-hot or soft targets use "
                     f"optax.softmax_cross_entropy")
  if jnp.shape(labels) != jnp.shape(logits)[:-1]:
    raise ValueError(f"{fn}: labels {jnp.shape(labels)} must have the shape of the logits "
                     f"{jnp.shape(logits)} without the class axis, i.e. {jnp.shape(logits)[:-1]}")


def _valid_labels(fn, logits, labels):
  """labels in [0, c) as a boolean mask [n]. An eager call with a label out of range raises;
  under jit (no host sync) the caller turns those examples' values into NaN, so a bad label
  cannot pass for a finite loss: optax would read -1 as the last class, and c as NaN or
  garbage."""
  _check_labels(fn, logits, labels)
  c = jnp.shape(logits)[-1]
  if not isinstance(labels, jax.core.Tracer):
    concrete = np.asarray(labels)
    bad = (concrete < 0) | (concrete >= c)
    if bad.any():
      raise ValueError(f"{fn}: labels must be class indices in [0, {c}), got "
                       f"{sorted(set(concrete[bad].tolist()))[:5]} ({int(bad.sum())} examples)")
  return (labels >= 0) & (labels < c)


def _nan_where_invalid(values, valid):
  return jnp.where(valid, values, jnp.nan)


def cross_entropy(logits: types.Array, labels: types.Array) -> types.Array:
  """Mean softmax cross-entropy with integer labels. logits: [n, c], labels: [n] in [0, c).

  A label outside [0, c) raises in an eager call and makes the loss NaN under jit (so the
  training loop's NaN guard stops the run), never a finite wrong loss.
  """
  valid = _valid_labels("cross_entropy", logits, labels)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
  return jnp.mean(_nan_where_invalid(ce, valid))


def weighted_cross_entropy(logits: types.Array, labels: types.Array,
                           class_weights: types.Array) -> types.Array:
  """Cross-entropy with per-class weights, normalised by the total weight (as torch does)."""
  valid = _valid_labels("weighted_cross_entropy", logits, labels)
  if jnp.shape(class_weights) != jnp.shape(logits)[-1:]:
    raise ValueError(f"weighted_cross_entropy: class_weights {jnp.shape(class_weights)} must "
                     f"have one weight per class, {jnp.shape(logits)[-1:]}")
  safe = jnp.where(valid, labels, 0)
  w = class_weights[safe]  # [n]
  ce = _nan_where_invalid(optax.softmax_cross_entropy_with_integer_labels(logits, safe), valid)
  return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-12)


def accuracy(logits: types.Array, labels: types.Array) -> types.Array:
  """Fraction of examples whose arg-max class is the label. logits: [n, c], labels: [n]; a
  label outside [0, c) raises eagerly and gives NaN under jit, as in cross_entropy."""
  valid = _valid_labels("accuracy", logits, labels)
  hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return jnp.mean(_nan_where_invalid(hit, valid))


def supervised(apply: Callable[[types.Params, types.Array], types.Array],
               loss: Callable[[types.Array, types.Array], types.Array]) -> types.LossFn:
  """Turns a model's apply and a prediction loss into loss_fn(params, batch) -> scalar.

  >>> import jax.numpy as jnp
  >>> loss_fn = supervised(lambda params, x: params["w"] * x, mse)
  >>> float(loss_fn({"w": 2.0}, types.Batch(jnp.ones((4, 1)), jnp.zeros((4, 1)))))
  4.0
  """

  def loss_fn(params, batch: types.Batch, task_repr=None):
    if task_repr is None:
      return loss(apply(params, batch.x), batch.y)
    return loss(apply(params, batch.x, task_repr=task_repr), batch.y)

  loss_fn.model_apply = apply  # lets meta_learner check the outputs against a family's ways
  return loss_fn

"""Losses and metrics over one batch, and the bridge from (apply, loss) to a LossFn."""

from typing import Callable

import jax.numpy as jnp
import optax

from mtpjax._src import types


def mse(pred: types.Array, target: types.Array) -> types.Array:
  """Mean squared error over every element. pred, target: [n, d]."""
  return jnp.mean(jnp.square(pred - target))


def cross_entropy(logits: types.Array, labels: types.Array) -> types.Array:
  """Mean softmax cross-entropy with integer labels. logits: [n, c], labels: [n]."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def weighted_cross_entropy(logits: types.Array, labels: types.Array,
                           class_weights: types.Array) -> types.Array:
  """Cross-entropy with per-class weights, normalised by the total weight (as torch does)."""
  w = class_weights[labels]  # [n]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-12)


def accuracy(logits: types.Array, labels: types.Array) -> types.Array:
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def supervised(apply: Callable[[types.Params, types.Array], types.Array],
               loss: Callable[[types.Array, types.Array], types.Array]) -> types.LossFn:
  """Turns a model's apply and a prediction loss into loss_fn(params, batch) -> scalar.

  >>> loss_fn = supervised(model.apply, mse)       # doctest: +SKIP
  >>> loss_fn(params, Batch(x, y))                  # doctest: +SKIP
  """

  def loss_fn(params, batch: types.Batch, task_repr=None):
    if task_repr is None:
      return loss(apply(params, batch.x), batch.y)
    return loss(apply(params, batch.x, task_repr=task_repr), batch.y)

  return loss_fn

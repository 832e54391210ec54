"""Prototypical networks (Snell et al. 2017) as a meta-learner with zero inner steps.

A task's representation is its class prototypes (the mean support embedding of each class),
computed once from the support set; the query loss is the cross-entropy of negative squared
distances to them. That is exactly `meta_learner(task_repr=...)` with `inner_steps=0`: the
meta-gradient reaches the embedding through the prototypes, and evaluation, checkpoints and
the experiment loop need nothing new.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from mtpjax._src import losses
from mtpjax._src import types


class ProtoNet(NamedTuple):
  """ProtoNet's functions: task_repr (the prototypes of a support set), logits, and the loss
  and accuracy that take those prototypes as task_repr."""

  task_repr: Callable[[types.Params, types.Batch], types.Array]  # -> prototypes [ways, d]
  logits: Callable[..., types.Array]     # logits(params, x, prototypes) -> [n, ways]
  loss_fn: types.LossFn                  # loss_fn(params, batch, task_repr=prototypes)
  accuracy_fn: types.LossFn              # the same, accuracy


def protonet(embed: Callable[[types.Params, types.Array], types.Array], ways: int) -> ProtoNet:
  """Builds ProtoNet's functions from an embedding apply(params, x) -> [n, d].

  >>> embed = lambda params, x: x * params["shared"].reshape(1, 2)  # a 2-d embedding
  >>> pn = protonet(embed, ways=2)
  >>> params = {"shared": jnp.ones(2)}
  >>> support = types.Batch(jnp.array([[0.0, 0.0], [4.0, 4.0]]), jnp.array([0, 1]))
  >>> prototypes = pn.task_repr(params, support)           # the class means
  >>> pn.logits(params, jnp.array([[3.0, 3.0]]), prototypes).argmax(-1)
  Array([1], dtype=int32)

  With `meta_learner(pn.loss_fn, opt, inner_steps=0, task_repr=pn.task_repr, ...)` the
  embedding is meta-trained with no inner loop.
  """
  if ways <= 0:
    raise ValueError(f"protonet: ways must be positive, got {ways}")

  def task_repr(params, support: types.Batch):
    z = embed(params, support.x)                                    # [n, d]
    onehot = jax.nn.one_hot(support.y, ways, dtype=z.dtype)         # [n, ways]
    counts = jnp.sum(onehot, axis=0)                                # [ways]
    # A class without support examples would divide by zero: its prototype stays at 0.
    return (onehot.T @ z) / jnp.maximum(counts, 1.0)[:, None]       # [ways, d]

  def logits(params, x, prototypes):
    z = embed(params, x)                                            # [n, d]
    sq = (jnp.sum(z * z, axis=-1)[:, None] - 2.0 * z @ prototypes.T
          + jnp.sum(prototypes * prototypes, axis=-1)[None, :])     # [n, ways]
    return -sq

  def _check(task_repr_value):
    if task_repr_value is None:
      raise ValueError("protonet: the loss needs the prototypes; build the learner with "
                       "meta_learner(..., task_repr=pn.task_repr)")

  def loss_fn(params, batch: types.Batch, task_repr=None):
    _check(task_repr)
    return losses.cross_entropy(logits(params, batch.x, task_repr), batch.y)

  def accuracy_fn(params, batch: types.Batch, task_repr=None):
    _check(task_repr)
    return losses.accuracy(logits(params, batch.x, task_repr), batch.y)

  return ProtoNet(task_repr, logits, loss_fn, accuracy_fn)

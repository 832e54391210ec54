"""Mixed precision: a loss computed in bfloat16 over float32 master parameters.

The parameters stay float32 (the optimizer's state, the inner loop's updates and the
meta-gradient accumulate in float32); each evaluation of the loss casts them, and the
batch's floating inputs, to the compute dtype. The cast's transpose casts the gradient back,
so `jax.grad` of the wrapped loss is float32 with the parameters' structure.
"""

from typing import Any

import jax
import jax.numpy as jnp

from mtpjax._src import types


def cast_floating(tree: Any, dtype) -> Any:
  """Every floating array of `tree` as `dtype`; integer arrays (token ids, labels) unchanged."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x,
      tree)


def mixed_precision(loss_fn: types.LossFn, dtype=jnp.bfloat16) -> types.LossFn:
  """loss_fn computed in `dtype` (default bfloat16) on float32 master parameters.

  The inputs of the batch are cast too; its targets are not (a regression target keeps its
  precision, class labels are integers). The loss comes back as float32.

  >>> loss_fn = lambda params, batch: jnp.sum(params["w"] * batch.x)
  >>> batch = types.Batch(jnp.ones(3), jnp.zeros(3))
  >>> mixed_precision(loss_fn)({"w": jnp.ones(3)}, batch).dtype
  dtype('float32')
  """
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"mixed_precision: the compute dtype must be floating, got {dtype}")

  def wrapped(params, batch, **kwargs):
    x, y = batch
    low = cast_floating(params, dtype)
    loss = loss_fn(low, type(batch)(cast_floating(x, dtype), y), **kwargs)
    return loss.astype(jnp.float32)

  return wrapped

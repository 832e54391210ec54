"""Multi-head attention with a key padding mask and optional prefix keys and values.

Shared by the pre-LayerNorm encoder trained here (transformer.py) and the post-LayerNorm BERT
encoder loaded from checkpoints (bert.py): both project queries, keys and values their own way
and call `attend`.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from mtpjax._src import types


def per_example(a: types.Array, n: int, rank: int) -> types.Array:
  """A prompt array given without its example axis (rank `rank`) broadcast to [n, ...];
  one that already has it is returned as is."""
  return jnp.broadcast_to(a, (n,) + a.shape[-rank:]) if a.ndim == rank else a


def with_prefix(k: types.Array, v: types.Array, key_mask: types.Array,
                prefix: Optional[types.Array]):
  """Prepends a prefix's keys and values (P-tuning v2 deep prompts) to a layer's own.

  k, v: [n, S, H, hd]; key_mask: [n, S]; prefix: [n, 2, P, H * hd] or None. A prefix of
  length 0 (or None) returns the inputs unchanged, so the layer computes exactly the
  un-prompted function.
  """
  if prefix is None or prefix.shape[-2] == 0:
    return k, v, key_mask
  n, _, heads, hd = k.shape
  p = prefix.shape[-2]
  pk = prefix[:, 0].reshape(n, p, heads, hd).astype(k.dtype)
  pv = prefix[:, 1].reshape(n, p, heads, hd).astype(v.dtype)
  key_mask = jnp.concatenate([jnp.ones((n, p), bool), key_mask], axis=1)
  return jnp.concatenate([pk, k], axis=1), jnp.concatenate([pv, v], axis=1), key_mask


def attend(q: types.Array, k: types.Array, v: types.Array, key_mask: types.Array) -> types.Array:
  """softmax(q k^T / sqrt(hd)) v per head, masked keys getting exactly zero weight.

  q: [n, S, H, hd]; k, v: [n, K, H, hd]; key_mask: [n, K] True where a key may be attended.
  Returns [n, S, H * hd]. A masked key's logit is the dtype's lowest value, so its weight
  underflows to exactly 0 and padding cannot reach real positions.
  """
  n, s, heads, hd = q.shape
  logits = jnp.einsum("nqhc,nkhc->nhqk", q, k) / jnp.sqrt(jnp.asarray(hd, q.dtype))
  logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("nhqk,nkhc->nqhc", weights, v).reshape(n, s, heads * hd)

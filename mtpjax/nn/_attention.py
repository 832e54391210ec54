"""Multi-head attention: key masks (padding, causal), grouped-query heads, RoPE, prefixes.

One attention for every family: the pre-LayerNorm encoder trained here (nn/_transformer.py),
BERT and RoBERTa, and the decoders (Llama family, GPT-2) with their KV cache
(pretrained/_causal_lm.py). Each projects queries, keys and values its own way and calls
`attend`.
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

  q: [n, S, H, hd]; k, v: [n, K, Hk, hd] with H a multiple of Hk (grouped-query attention:
  query head h reads key head h // (H / Hk)); key_mask: [n, K] (the same keys for every
  query: padding) or [n, S, K] (per query: causal and padding). Returns [n, S, H * hd]. A
  masked key's logit is the dtype's lowest value, so its weight underflows to exactly 0 and
  padding cannot reach real positions.
  """
  n, s, heads, hd = q.shape
  kv_heads = k.shape[2]
  if heads % kv_heads:
    raise ValueError(f"attend: {heads} query heads do not divide into {kv_heads} key heads")
  q = q.reshape(n, s, kv_heads, heads // kv_heads, hd)
  logits = jnp.einsum("nqhgc,nkhc->nhgqk", q, k) / jnp.sqrt(jnp.asarray(hd, q.dtype))
  mask = key_mask[:, None, None, None, :] if key_mask.ndim == 2 else key_mask[:, None, None]
  logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("nhgqk,nkhc->nqhgc", weights, v).reshape(n, s, heads * hd)


def rope(x: types.Array, positions: types.Array, base: float) -> types.Array:
  """Rotary position embedding, Hugging Face's half-split layout (`rotate_half`).

  x: [n, S, H, hd]; positions: [n, S] integers. Coordinate i pairs with i + hd/2 and both
  rotate by positions * base^(-2i/hd). The angles are computed in float32 whatever x's
  dtype, float64 under x64 (positions reach 10^4, where bfloat16 angles would be wrong).
  """
  hd = x.shape[-1]
  f = jnp.promote_types(x.dtype, jnp.float32)  # float32, or float64 under jax_enable_x64
  inv = 1.0 / (base ** (jnp.arange(0, hd, 2, dtype=f) / hd))                    # [hd/2]
  angles = positions.astype(f)[..., None] * inv[None, None]                     # [n, S, hd/2]
  cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
  sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
  half = hd // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return (x.astype(f) * cos + rotated.astype(f) * sin).astype(x.dtype)

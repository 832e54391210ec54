"""A decoder's sequence computation, for every family: masks, prompts, prefixes, the KV cache.

A family module (_llama, _gpt2) says what one block computes: `embed(config, params, x,
positions)`, `qkv(config, layer, h, positions) -> q, k, v`, `block_out(config, layer, h,
attended)`, `final` and `head`. This module runs the stacked layers as one lax.scan, either
over a whole sequence (`forward`) or over a chunk of tokens against a fixed-size KV cache
(`cached_step`), which is what generation and label scoring use.

Prompts:
  tokens  [P, d] or [n, P, d]: input embeddings inserted at position `insert_at` (1 after a
          BOS token, 0 where the tokenizer adds none); they take positions like words.
  prefix  [L, 2, P, Hk hd] or [n, L, 2, P, Hk hd]: keys (already rotated: no RoPE is
          applied to them) and values prepended in every layer (P-tuning v2), attended by
          every token; the tokens then take positions P, P+1, ... as in transformers and PEFT
          (`prefix_positions="after"`) or 0, 1, ... ("from_0").
A prompt of length 0 computes exactly the plain model. Positions come from the mask
(cumsum - 1), so left and right padding give a sequence the same logits.
"""

import jax
import jax.numpy as jnp

from mtpjax.nn import _attention as attention
from mtpjax.pretrained import _bert as bert

PREFIX_POSITIONS = ("after", "from_0")


def _prefix_layers(config, prefix, n):
  """A prefix [L, 2, P, Hk hd] (or [n, ...]) as [L, n, 2, P, Hk, hd], or None."""
  if prefix is None or prefix.shape[-2] == 0:
    return None
  depth, kv = config.num_hidden_layers, config.kv_dim
  if prefix.ndim not in (4, 5) or prefix.shape[-4:-2] != (depth, 2) or prefix.shape[-1] != kv:
    raise ValueError(f"{config.model_type}: a prefix must be [{depth}, 2, P, {kv}] (layers, "
                     f"keys and values, length, key heads x head size) or with a leading "
                     f"example axis, got {prefix.shape}")
  prefix = attention.per_example(prefix, n, 4)
  p = prefix.shape[-2]
  prefix = prefix.reshape(n, depth, 2, p, config.num_key_value_heads, config.head_dim)
  return jnp.moveaxis(prefix, 1, 0)


def prefix_length(prefix) -> int:
  return 0 if prefix is None else int(prefix.shape[-2])


def check_length(config, length: int) -> None:
  """Sequences the checkpoint cannot compute exactly are refused before anything runs."""
  if length > config.max_position_embeddings:
    raise ValueError(f"{config.model_type}: {length} positions exceed the checkpoint's "
                     f"{config.max_position_embeddings} (max_position_embeddings)")
  window = getattr(config, "sliding_window", None)
  if window and length > window:
    raise ValueError(f"{config.model_type}: {length} positions exceed the sliding window of "
                     f"{window}; longer sequences are not supported")


def embeddings(family, config, params, ids, mask, tokens=None, insert_at: int = 0):
  """Input embeddings [n, S (+ P), d] and the mask, prompt tokens inserted at `insert_at`."""
  x = bert.word_embeddings(family.word_embeddings(params), ids)
  mask = jnp.asarray(mask, bool)
  if tokens is not None and tokens.shape[-2] > 0:
    d = config.hidden_size
    if tokens.ndim not in (2, 3) or tokens.shape[-1] != d:
      raise ValueError(f"{config.model_type}: prompt tokens must be [P, {d}] or [n, P, {d}], "
                       f"got {tokens.shape}")
    n, p = ids.shape[0], tokens.shape[-2]
    tokens = attention.per_example(tokens, n, 2).astype(x.dtype)
    x = jnp.concatenate([x[:, :insert_at], tokens, x[:, insert_at:]], axis=1)
    mask = jnp.concatenate([mask[:, :insert_at], jnp.ones((n, p), bool), mask[:, insert_at:]],
                           axis=1)
  return x, mask


def positions_of(mask, offset: int = 0):
  """Position ids from a mask: 0, 1, ... over each row's real tokens wherever they sit."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0) + offset


def forward(family, config, params, x, mask, *, prefix=None, prefix_positions: str = "after",
            return_layers: bool = False):
  """Final hidden states [n, S, d] of input embeddings x [n, S, d] under the causal and
  padding mask [n, S]; with return_layers also the residual stream after every layer
  [L, n, S, d]. No cache: every position attends to the earlier ones of its row."""
  n, s, _ = x.shape
  pre = _prefix_layers(config, prefix, n)
  p = prefix_length(prefix)
  check_length(config, s + (p if prefix_positions == "after" else 0))
  positions = positions_of(mask, p if prefix_positions == "after" else 0)
  h = family.embed(config, params, x, positions)
  key_mask = jnp.tril(jnp.ones((s, s), bool))[None] & mask[:, None, :]        # [n, S, S]
  if pre is not None:
    key_mask = jnp.concatenate([jnp.ones((n, s, p), bool), key_mask], axis=-1)

  def layer(h, xs):
    lp, lpre = xs
    q, k, v = family.qkv(config, lp, h, positions)
    if lpre is not None:
      k = jnp.concatenate([lpre[:, 0].astype(k.dtype), k], axis=1)
      v = jnp.concatenate([lpre[:, 1].astype(v.dtype), v], axis=1)
    h = family.block_out(config, lp, h, attention.attend(q, k, v, key_mask))
    return h, (h if return_layers else None)

  h, layers = jax.lax.scan(layer, h, (params["layers"], pre))
  out = family.final(config, params, h)
  return (out, layers) if return_layers else out


def init_cache(config, n: int, size: int, dtype=jnp.float32) -> dict:
  """An empty KV cache of `size` slots per row: {"k", "v": [L, n, size, Hk, hd]}."""
  shape = (config.num_hidden_layers, n, size, config.num_key_value_heads, config.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def cached_step(family, config, params, x, start, cache, *, prefix=None,
                prefix_positions: str = "after"):
  """Runs input embeddings x [n, T, d] that sit at slots start[i] .. start[i] + T - 1 of
  row i (each row's tokens are contiguous from slot 0), writing their keys and values into
  the cache. Returns (final hidden states [n, T, d], the new cache).

  A token attends to every slot of its row up to its own (the cache holds nothing else that
  is valid there) and to the prefix. Slots past a row's end may hold stale keys of padding:
  they sit after every query of that row, so the causal mask removes them.
  """
  n, t, _ = x.shape
  size = cache["k"].shape[2]
  pre = _prefix_layers(config, prefix, n)
  p = prefix_length(prefix)
  slots = start[:, None] + jnp.arange(t)[None]                                    # [n, T]
  positions = slots + (p if prefix_positions == "after" else 0)
  h = family.embed(config, params, x, positions)
  key_mask = jnp.arange(size)[None, None, :] <= slots[:, :, None]               # [n, T, size]
  if pre is not None:
    key_mask = jnp.concatenate([jnp.ones((n, t, p), bool), key_mask], axis=-1)
  zero = jnp.zeros((), jnp.int32)
  write = jax.vmap(lambda c, u, s: jax.lax.dynamic_update_slice(c, u, (s, zero, zero)))

  def layer(h, xs):
    lp, ck, cv, lpre = xs
    q, k, v = family.qkv(config, lp, h, positions)
    ck, cv = write(ck, k.astype(ck.dtype), start), write(cv, v.astype(cv.dtype), start)
    kk, vv = ck.astype(q.dtype), cv.astype(q.dtype)
    if lpre is not None:
      kk = jnp.concatenate([lpre[:, 0].astype(q.dtype), kk], axis=1)
      vv = jnp.concatenate([lpre[:, 1].astype(q.dtype), vv], axis=1)
    h = family.block_out(config, lp, h, attention.attend(q, kk, vv, key_mask))
    return h, (ck, cv)

  h, (ck, cv) = jax.lax.scan(layer, h, (params["layers"], cache["k"], cache["v"], pre))
  return family.final(config, params, h), {"k": ck, "v": cv}


def prefill(family, config, params, ids, mask, *, extra: int, tokens=None, prefix=None,
            insert_at: int = 0, prefix_positions: str = "after", cache_dtype=None):
  """Runs a right-padded context (with its prompt) into a new cache with `extra` free slots
  per row. Returns (the cache, each row's length [n] (prompt tokens included), the last real
  position's final hidden state [n, d], the input embeddings' dtype)."""
  x, mask = embeddings(family, config, params, ids, mask, tokens, insert_at)
  n, s, _ = x.shape
  p = prefix_length(prefix)
  check_length(config, s + extra + (p if prefix_positions == "after" else 0))
  lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
  cache = init_cache(config, n, s + extra, cache_dtype or x.dtype)
  h, cache = cached_step(family, config, params, x, jnp.zeros((n,), jnp.int32), cache,
                         prefix=prefix, prefix_positions=prefix_positions)
  last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0]
  return cache, lengths, last, x.dtype

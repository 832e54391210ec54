"""A decoder's sequence computation, for every family: masks, prompts, prefixes, the KV cache.

A family module (_llama, _gpt2) says what one block computes: `embed(config, params, x,
positions)`, `qkv(config, layer, h, positions) -> q, k, v`, `block_out(config, layer, h,
attended)`, `final` and `head`. This module runs the stacked layers as lax.scans, either
over a whole sequence (`forward`) or over a chunk of tokens against a fixed-size KV cache
(`cached_step`), which is what generation and label scoring use.

Prompts:
  tokens  [P, d] or [n, P, d]: inserted at position `insert_at` (1 after a BOS token, 0 where
          the tokenizer adds none); they take positions like words. They enter at layer
          `entry_layer`: at 0 they are input embeddings; at k > 0 ("late prompts", Liu et al.
          2022) they are hidden states inserted at the input of layer k, and the layers below
          compute the text alone (with the text's own positions), so that part does not
          depend on the prompt and can be computed once (`lower`) and reused.
  prefix  [L - k, 2, P, Hk hd] or [n, ...]: keys (already rotated: no RoPE is applied to
          them) and values prepended in every layer from the entry layer on (P-tuning v2),
          attended by every token; the tokens then take positions P, P+1, ... in those layers
          as in transformers and PEFT (`prefix_positions="after"`) or 0, 1, ... ("from_0").
A prompt of length 0 computes exactly the plain model. Positions come from the mask
(cumsum - 1), so left and right padding give a sequence the same logits.

A cache with entry layer k > 0 holds the upper layers' keys and values over the text and the
prompt tokens ({"k", "v": [L - k, n, size, Hk, hd]}) and the lower layers' over the text alone
({"lower": {"k", "v": [k, n, size - P, Hk, hd]}}); the difference of the two sizes is P.
"""

import jax
import jax.numpy as jnp

from mtpjax.nn import _attention as attention
from mtpjax.pretrained import _bert as bert

PREFIX_POSITIONS = ("after", "from_0")


def check_entry_layer(config, entry_layer) -> int:
  depth = config.num_hidden_layers
  if isinstance(entry_layer, bool) or not isinstance(entry_layer, int) or not (
      0 <= entry_layer < depth):
    raise ValueError(f"{config.model_type}: entry_layer must be an integer in [0, {depth}) "
                     f"for a {depth}-layer decoder, got {entry_layer!r}")
  return entry_layer


def _prefix_layers(config, prefix, n, entry_layer=0):
  """A prefix [L - k, 2, P, Hk hd] (or [n, ...]) as [L - k, n, 2, P, Hk, hd], or None."""
  if prefix is None or prefix.shape[-2] == 0:
    return None
  depth, kv = config.num_hidden_layers - entry_layer, config.kv_dim
  if prefix.ndim not in (4, 5) or prefix.shape[-4:-2] != (depth, 2) or prefix.shape[-1] != kv:
    raise ValueError(f"{config.model_type}: a prefix must be [{depth}, 2, P, {kv}] (layers "
                     f"from the entry layer {entry_layer} on, keys and values, length, key "
                     f"heads x head size) or with a leading example axis, got {prefix.shape}")
  prefix = attention.per_example(prefix, n, 4)
  p = prefix.shape[-2]
  prefix = prefix.reshape(n, depth, 2, p, config.num_key_value_heads, config.head_dim)
  return jnp.moveaxis(prefix, 1, 0)


def prefix_length(prefix) -> int:
  return 0 if prefix is None else int(prefix.shape[-2])


def _offset(prefix, prefix_positions) -> int:
  return prefix_length(prefix) if prefix_positions == "after" else 0


def check_length(config, length: int) -> None:
  """Sequences the checkpoint cannot compute exactly are refused before anything runs."""
  if length > config.max_position_embeddings:
    raise ValueError(f"{config.model_type}: {length} positions exceed the checkpoint's "
                     f"{config.max_position_embeddings} (max_position_embeddings)")
  window = getattr(config, "sliding_window", None)
  if window and length > window:
    raise ValueError(f"{config.model_type}: {length} positions exceed the sliding window of "
                     f"{window}; longer sequences are not supported")


def insert(config, h, mask, tokens=None, insert_at: int = 0):
  """h [n, S, d] with prompt tokens [P, d] or [n, P, d] inserted at `insert_at`, and the mask."""
  mask = jnp.asarray(mask, bool)
  if tokens is None or tokens.shape[-2] == 0:
    return h, mask
  d = config.hidden_size
  if tokens.ndim not in (2, 3) or tokens.shape[-1] != d:
    raise ValueError(f"{config.model_type}: prompt tokens must be [P, {d}] or [n, P, {d}], "
                     f"got {tokens.shape}")
  n, p = h.shape[0], tokens.shape[-2]
  tokens = attention.per_example(tokens, n, 2).astype(h.dtype)
  h = jnp.concatenate([h[:, :insert_at], tokens, h[:, insert_at:]], axis=1)
  mask = jnp.concatenate([mask[:, :insert_at], jnp.ones((n, p), bool), mask[:, insert_at:]],
                         axis=1)
  return h, mask


def embeddings(family, config, params, ids, mask, tokens=None, insert_at: int = 0):
  """Input embeddings [n, S (+ P), d] and the mask, prompt tokens inserted at `insert_at`."""
  x = bert.word_embeddings(family.word_embeddings(params), ids)
  return insert(config, x, mask, tokens, insert_at)


def positions_of(mask, offset: int = 0):
  """Position ids from a mask: 0, 1, ... over each row's real tokens wherever they sit."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0) + offset


def _layers(params, lo, hi=None):
  return jax.tree.map(lambda a: a[lo:hi], params["layers"])


def _scan(family, config, layers, h, positions, key_mask, pre=None, collect=None):
  """The layers over a whole sequence; collect "h" (the stream after every layer) or "kv"
  (every layer's keys and values, for a cache)."""
  def layer(h, xs):
    lp, lpre = xs
    q, k, v = family.qkv(config, lp, h, positions)
    kv = (k, v) if collect == "kv" else None
    if lpre is not None:
      k = jnp.concatenate([lpre[:, 0].astype(k.dtype), k], axis=1)
      v = jnp.concatenate([lpre[:, 1].astype(v.dtype), v], axis=1)
    h = family.block_out(config, lp, h, attention.attend(q, k, v, key_mask))
    return h, (h if collect == "h" else kv)

  return jax.lax.scan(layer, h, (layers, pre))


def _causal(mask, p: int = 0):
  """[n, S, p + S]: each token sees the p prefix slots and the real tokens up to itself."""
  n, s = mask.shape
  key_mask = jnp.tril(jnp.ones((s, s), bool))[None] & mask[:, None, :]
  if p:
    key_mask = jnp.concatenate([jnp.ones((n, s, p), bool), key_mask], axis=-1)
  return key_mask


def lower(family, config, params, ids, mask, entry_layer: int) -> dict:
  """What a late prompt cannot change: the text's hidden states entering layer `entry_layer`
  {"h": [n, S, d]} and the lower layers' keys and values {"k", "v": [k, n, S, Hk, hd]}."""
  mask = jnp.asarray(mask, bool)
  x = bert.word_embeddings(family.word_embeddings(params), ids)
  positions = positions_of(mask)
  h = family.embed(config, params, x, positions)
  h, (k, v) = _scan(family, config, _layers(params, 0, entry_layer), h, positions,
                    _causal(mask), collect="kv")
  return {"h": h, "k": k, "v": v}


def _lower_of(family, config, params, ids, mask, entry_layer, given):
  if given is None:
    return lower(family, config, params, ids, mask, entry_layer)
  want = {"h": (*ids.shape, config.hidden_size),
          "k": (entry_layer, *ids.shape, config.num_key_value_heads, config.head_dim)}
  want["v"] = want["k"]
  if not isinstance(given, dict) or any(
      key not in given or tuple(given[key].shape) != shape for key, shape in want.items()):
    got = ({key: tuple(a.shape) for key, a in given.items()} if isinstance(given, dict)
           else type(given).__name__)
    raise ValueError(f"{config.model_type}: precomputed lower states for ids {ids.shape} at "
                     f"entry layer {entry_layer} must be {want}, got {got}")
  return given


def forward(family, config, params, ids, mask, *, tokens=None, insert_at: int = 0,
            prefix=None, prefix_positions: str = "after", entry_layer: int = 0, lower=None,
            return_layers: bool = False):
  """Final hidden states [n, S (+ P), d] of token ids [n, S] under the causal and padding
  mask, with prompt tokens (entering at `entry_layer`) and a prefix; with return_layers
  (entry layer 0 only) also the residual stream after every layer [L, n, S (+ P), d].
  `lower`: the text's precomputed `lower(...)` states (entry_layer > 0). No cache."""
  mask = jnp.asarray(mask, bool)
  n = ids.shape[0]
  p = prefix_length(prefix)
  off = _offset(prefix, prefix_positions)
  pre = _prefix_layers(config, prefix, n, entry_layer)
  if entry_layer == 0:
    x, mask = embeddings(family, config, params, ids, mask, tokens, insert_at)
    check_length(config, x.shape[1] + off)
    positions = positions_of(mask, off)
    h = family.embed(config, params, x, positions)
  else:
    if return_layers:
      raise ValueError("return_layers: every layer's stream exists only for entry_layer 0")
    h = _lower_of(family, config, params, ids, mask, entry_layer, lower)["h"]
    h, mask = insert(config, h, mask, tokens, insert_at)
    check_length(config, h.shape[1] + off)
    positions = positions_of(mask, off)
  h, layers = _scan(family, config, _layers(params, entry_layer), h, positions,
                    _causal(mask, p), pre, collect="h" if return_layers else None)
  out = family.final(config, params, h)
  return (out, layers) if return_layers else out


def init_cache(config, n: int, size: int, dtype=jnp.float32, layers=None) -> dict:
  """An empty KV cache of `size` slots per row: {"k", "v": [L, n, size, Hk, hd]}."""
  depth = config.num_hidden_layers if layers is None else layers
  shape = (depth, n, size, config.num_key_value_heads, config.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def _cached_scan(family, config, layers, h, start, positions, cache, pre):
  """The layers over a chunk h [n, T, d] at slots start[i] ..., reading and writing the cache."""
  n, t, _ = h.shape
  size = cache["k"].shape[2]
  slots = start[:, None] + jnp.arange(t)[None]                                    # [n, T]
  key_mask = jnp.arange(size)[None, None, :] <= slots[:, :, None]               # [n, T, size]
  if pre is not None:
    key_mask = jnp.concatenate([jnp.ones((n, t, pre.shape[3]), bool), key_mask], axis=-1)
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

  h, (ck, cv) = jax.lax.scan(layer, h, (layers, cache["k"], cache["v"], pre))
  return h, {"k": ck, "v": cv}


def cached_step(family, config, params, x, start, cache, *, prefix=None,
                prefix_positions: str = "after"):
  """Runs input embeddings x [n, T, d] that sit at slots start[i] .. start[i] + T - 1 of
  row i (each row's tokens are contiguous from slot 0), writing their keys and values into
  the cache. Returns (final hidden states [n, T, d], the new cache).

  A token attends to every slot of its row up to its own (the cache holds nothing else that
  is valid there) and to the prefix. Slots past a row's end may hold stale keys of padding:
  they sit after every query of that row, so the causal mask removes them. The tokens come
  after any prompt tokens, so with a late prompt they sit P slots earlier in the lower cache.
  """
  t = x.shape[1]
  entry_layer = cache["lower"]["k"].shape[0] if "lower" in cache else 0
  pre = _prefix_layers(config, prefix, x.shape[0], entry_layer)
  positions = start[:, None] + jnp.arange(t)[None] + _offset(prefix, prefix_positions)
  if not entry_layer:
    h = family.embed(config, params, x, positions)
    h, cache = _cached_scan(family, config, params["layers"], h, start, positions, cache, pre)
    return family.final(config, params, h), cache
  p = cache["k"].shape[2] - cache["lower"]["k"].shape[2]
  low_start = start - p
  low_positions = low_start[:, None] + jnp.arange(t)[None]
  h = family.embed(config, params, x, low_positions)
  h, low = _cached_scan(family, config, _layers(params, 0, entry_layer), h, low_start,
                        low_positions, cache["lower"], None)
  h, up = _cached_scan(family, config, _layers(params, entry_layer), h, start, positions,
                       cache, pre)
  return family.final(config, params, h), {**up, "lower": low}


def prefill(family, config, params, ids, mask, *, extra: int, tokens=None, prefix=None,
            insert_at: int = 0, prefix_positions: str = "after", cache_dtype=None,
            entry_layer: int = 0, lower=None):
  """Runs a right-padded context (with its prompt) into a new cache with `extra` free slots
  per row. Returns (the cache, each row's length [n] (prompt tokens included), the last real
  position's final hidden state [n, d], the input embeddings' dtype). With entry_layer > 0
  the text's lower layers come from `lower` when given (see `lower`)."""
  n = ids.shape[0]
  off = _offset(prefix, prefix_positions)
  pre = _prefix_layers(config, prefix, n, entry_layer)
  zeros = jnp.zeros((n,), jnp.int32)
  if entry_layer == 0:
    x, mask = embeddings(family, config, params, ids, mask, tokens, insert_at)
    s, dtype = x.shape[1], x.dtype
    check_length(config, s + extra + off)
    cache = init_cache(config, n, s + extra, cache_dtype or dtype)
    h, cache = cached_step(family, config, params, x, zeros, cache, prefix=prefix,
                           prefix_positions=prefix_positions)
  else:
    low = _lower_of(family, config, params, ids, mask, entry_layer, lower)
    dtype = family.word_embeddings(params).dtype
    cdtype = cache_dtype or dtype
    pad = ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0))
    low_cache = {k: jnp.pad(low[k].astype(cdtype), pad) for k in ("k", "v")}
    h, mask = insert(config, low["h"].astype(dtype), mask, tokens, insert_at)
    s = h.shape[1]
    check_length(config, s + extra + off)
    cache = init_cache(config, n, s + extra, cdtype, config.num_hidden_layers - entry_layer)
    positions = jnp.arange(s)[None] + off
    h, cache = _cached_scan(family, config, _layers(params, entry_layer), h, zeros,
                            jnp.broadcast_to(positions, (n, s)), cache, pre)
    h = family.final(config, params, h)
    cache["lower"] = low_cache
  lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
  last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0]
  return cache, lengths, last, dtype

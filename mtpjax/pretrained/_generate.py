"""Cached decoding in one lax loop: greedy, temperature, top-k and top-p sampling, stop tokens.

The context (with its soft prompt or prefix) runs once into a fixed-size KV cache
(_causal_lm.cached_step); each new token then runs alone against the cache, inside one
lax.scan, so a whole generation is one compiled call. Rows are contiguous from slot 0 (the
caller left-justifies left-padded rows) and each row writes its next token at its own length,
so rows of different lengths decode side by side without padding between context and output.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from mtpjax.pretrained import _causal_lm as clm


def _filter_logits(logits, temperature: float, top_k: int, top_p: float):
  """Logits with temperature applied and everything outside the top-k / top-p set at -inf."""
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest set whose probability reaches top_p: a token stays if the mass
    # before it is below top_p (the most likely token always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = before < top_p
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, -jnp.inf)
  return logits


def choose(logits, key, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0):
  """The next token [n] from logits [n, V]: argmax at temperature 0, else a draw from the
  filtered softmax."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, _filter_logits(logits, temperature, top_k, top_p),
                                axis=-1).astype(jnp.int32)


def generate(family, config, params, ids, mask, *, max_new_tokens: int, tokens=None,
             prefix=None, insert_at: int = 0, prefix_positions: str = "after",
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             stop_tokens: Sequence[int] = (), pad_id: int = 0, key=None,
             cache_dtype=None, return_logits: bool = False, entry_layer: int = 0,
             lower=None):
  """New token ids [n, max_new_tokens] after left-justified ids [n, S] with mask [n, S].

  After a stop token a row emits `pad_id`. Prompt tokens enter at `entry_layer` (the text's
  lower layers precomputed in `lower` when given, see _causal_lm.lower). With return_logits
  also the logits each token was chosen from [n, max_new_tokens, V]. Traceable: jit it with
  the sampling settings static.
  """
  cache, lengths, last, dtype = clm.prefill(
      family, config, params, ids, mask, extra=max_new_tokens, tokens=tokens, prefix=prefix,
      insert_at=insert_at, prefix_positions=prefix_positions, cache_dtype=cache_dtype,
      entry_layer=entry_layer, lower=lower)
  n = lengths.shape[0]
  logits = family.head(config, params, last)
  stop = jnp.asarray(tuple(stop_tokens) or (-1,), jnp.int32)
  key = jax.random.key(0) if key is None else key
  table = family.word_embeddings(params)

  def step(carry, _):
    cache, cur, logits, done, key = carry
    key, sub = jax.random.split(key)
    tok = choose(logits, sub, temperature=temperature, top_k=top_k, top_p=top_p)
    tok = jnp.where(done, pad_id, tok)
    done = done | jnp.isin(tok, stop)
    h, cache = clm.cached_step(family, config, params, table[tok][:, None].astype(dtype),
                               cur, cache, prefix=prefix, prefix_positions=prefix_positions)
    out = (tok, logits) if return_logits else tok
    return (cache, cur + 1, family.head(config, params, h[:, 0]), done, key), out

  done = jnp.zeros((n,), bool)
  _, out = jax.lax.scan(step, (cache, lengths, logits, done, key), None,
                        length=max_new_tokens)
  if return_logits:
    return out[0].T, jnp.moveaxis(out[1], 0, 1)
  return out.T

"""Label scoring: candidate log-likelihoods under a decoder, masked-LM verbalizers.

Heads that turn a language model into a classifier without new weights: a decoder scores
each candidate label string after the context (the context and its prompt computed once and
shared by the candidates); a masked LM reads its [MASK] logits at the label words (a
verbalizer), or compares its [MASK] feature with label embeddings that are means of support
[MASK] features (MetaPrompter's RepVerb, a soft verbalizer). Each returns [n, K] scores that
plug into a cross-entropy loss, `meta_learner` and the evaluation like prototype logits do.
"""

import jax
import jax.numpy as jnp

from mtpjax.pretrained import _causal_lm as clm

NORMALIZATIONS = ("sum", "mean")


def label_log_likelihoods(family, config, params, ids, mask, label_ids, label_mask, *,
                          tokens=None, prefix=None, insert_at: int = 0,
                          prefix_positions: str = "after", cache_dtype=None,
                          entry_layer: int = 0, lower=None, shared=None):
  """log p(label | context) per token [n, K, Tl] for right-padded contexts ids [n, S] and K
  candidate labels label_ids [K, Tl] (right-padded, label_mask [K, Tl]); 0 at padding.

  The context and its prompt run once into the cache; each candidate then runs against a
  copy of it (lax.map over candidates, so memory holds one copy at a time). Sum over the
  last axis for a label's log-likelihood, or divide by its length for the mean.

  shared: (ids [S0], mask [S0]), a context every row continues (an episode's instruction and
  demonstrations): it runs once, with the prompt, and the rows' ids are then its
  continuations (tokenized without special tokens), so the scores are those of each row's
  context shared + ids at the cost of one forward of shared plus the rows.
  """
  tl = label_ids.shape[1]
  if shared is None:
    cache, lengths, last, dtype = clm.prefill(
        family, config, params, ids, mask, extra=tl, tokens=tokens, prefix=prefix,
        insert_at=insert_at, prefix_positions=prefix_positions, cache_dtype=cache_dtype,
        entry_layer=entry_layer, lower=lower)
  else:
    cache, lengths, last, dtype = _continue_shared(
        family, config, params, shared, ids, mask, extra=tl, tokens=tokens, prefix=prefix,
        insert_at=insert_at, prefix_positions=prefix_positions, cache_dtype=cache_dtype,
        entry_layer=entry_layer, lower=lower)
  n = lengths.shape[0]
  first = jax.nn.log_softmax(family.head(config, params, last), axis=-1)         # [n, V]
  table = family.word_embeddings(params)

  def one(label):
    lid, lmask = label
    lx = jnp.broadcast_to(table[lid][None].astype(dtype), (n, tl, table.shape[-1]))
    hl, _ = clm.cached_step(family, config, params, lx, lengths, cache, prefix=prefix,
                            prefix_positions=prefix_positions)
    logp = jax.nn.log_softmax(family.head(config, params, hl[:, :-1]), axis=-1)  # [n, Tl-1, V]
    logp = jnp.concatenate([first[:, None], logp], axis=1)                         # [n, Tl, V]
    picked = jnp.take_along_axis(logp, jnp.broadcast_to(lid, (n, tl))[..., None], axis=-1)
    return jnp.where(lmask[None], picked[..., 0], 0.0)

  out = jax.lax.map(one, (jnp.maximum(label_ids, 0), jnp.asarray(label_mask, bool)))
  return jnp.moveaxis(out, 0, 1)


def _continue_shared(family, config, params, shared, ids, mask, *, extra, tokens, prefix,
                     insert_at, prefix_positions, cache_dtype, entry_layer, lower):
  """prefill's (cache, lengths, last, dtype) for rows that each continue one shared context:
  the shared part (with the prompt) runs once into a cache of one row, which every row then
  extends with its own tokens."""
  if lower is not None:
    raise ValueError("label scores: `lower` holds the states of whole contexts; with a shared "
                     "context the lower layers are computed from it (pass lower=None)")
  if tokens is not None and tokens.ndim == 3:
    raise ValueError("label scores: a shared context takes one prompt [P, d], not one per row "
                     f"{tokens.shape}")
  shared_ids, shared_mask = (jnp.asarray(a) for a in shared)
  if shared_ids.ndim != 1 or shared_mask.shape != shared_ids.shape:
    raise ValueError(f"label scores: shared must be (ids [S0], mask [S0]), got "
                     f"{shared_ids.shape} and {shared_mask.shape}")
  n, s = ids.shape
  cache, length0, last0, dtype = clm.prefill(
      family, config, params, shared_ids[None], shared_mask[None], extra=s + extra,
      tokens=tokens, prefix=prefix, insert_at=insert_at, prefix_positions=prefix_positions,
      cache_dtype=cache_dtype, entry_layer=entry_layer)
  cache = jax.tree.map(lambda c: jnp.repeat(c, n, axis=1), cache)     # [L, n, size, ...]
  start = jnp.broadcast_to(length0, (n,))
  x, _ = clm.embeddings(family, config, params, ids, mask)  # ids past the vocabulary: NaN
  x = x.astype(dtype)
  h, cache = clm.cached_step(family, config, params, x, start, cache, prefix=prefix,
                             prefix_positions=prefix_positions)
  own = jnp.sum(jnp.asarray(mask, bool), axis=1).astype(jnp.int32)
  last = jnp.take_along_axis(h, jnp.maximum(own - 1, 0)[:, None, None], axis=1)[:, 0]
  last = jnp.where((own > 0)[:, None], last, last0)  # a row with no tokens of its own
  return cache, start + own, last, dtype


def reduce(per_token, label_mask, normalize: str = "sum"):
  """[n, K] label scores from per-token log-likelihoods [n, K, Tl]: their sum (the label's
  log-likelihood) or mean (length-normalised, so long labels are not penalised)."""
  if normalize not in NORMALIZATIONS:
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
  total = per_token.sum(axis=-1)
  if normalize == "sum":
    return total
  return total / jnp.maximum(jnp.asarray(label_mask).sum(axis=-1), 1)[None]


def verbalizer_logits(mask_logits, label_token_ids, label_token_mask):
  """Masked-LM verbalizer scores [n, K]: the mean log-probability of each label's tokens
  at the [MASK] position.

  mask_logits: [n, V] logits at the [MASK] of each example; label_token_ids [K, Tl] (padded,
  label_token_mask [K, Tl]). A label of several tokens is scored by the mean of its tokens'
  log-probabilities at that one [MASK] (PET's single-mask approximation: exact only for
  one-token labels; a template with Tl masks would score them jointly).
  """
  logp = jax.nn.log_softmax(mask_logits.astype(jnp.float32), axis=-1)        # [n, V]
  picked = jnp.take(logp, jnp.maximum(label_token_ids, 0), axis=-1)         # [n, K, Tl]
  m = jnp.asarray(label_token_mask, bool)[None]
  return jnp.sum(jnp.where(m, picked, 0.0), -1) / jnp.maximum(m.sum(-1), 1)


def soft_verbalizer(support_features, support_labels, num_classes: int):
  """Label embeddings [K, d]: the mean [MASK] feature of each class's support examples
  (MetaPrompter's RepVerb). support_features [m, d], support_labels [m] int."""
  onehot = jax.nn.one_hot(support_labels, num_classes, dtype=support_features.dtype)
  return (onehot.T @ support_features) / jnp.maximum(onehot.sum(0), 1.0)[:, None]


def soft_verbalizer_logits(features, label_embeddings, scale: float = 10.0):
  """Scaled cosine similarity [n, K] of [MASK] features [n, d] to label embeddings [K, d]."""
  f = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
  e = label_embeddings / jnp.maximum(jnp.linalg.norm(label_embeddings, axis=-1,
                                                     keepdims=True), 1e-12)
  return scale * f @ e.T

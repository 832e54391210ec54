"""A loaded decoder language model: tokenize, logits, generate, score labels, with prompts.

`CausalLM` holds a family module (_llama, _gpt2), its config and weights, and the tokenizer.
Its methods take and return numpy arrays and compile once per shape bucket; the pure
functions behind them (`hidden`, `logits_fn`, `scores_fn`) take the weights and a prompt as
arguments, so a soft prompt or prefix can be differentiated and meta-learned through them.

A prompt is a dict as for the BERT encoder: {"tokens": [P, d] or [n, P, d]} (inserted after
BOS where the tokenizer adds one, else first) and/or {"prefix": [L - k, 2, P, Hk hd] or [n,
...]} (keys and values in every layer from the entry layer k on). With `entry_layer=k > 0` the
tokens are hidden states entering layer k (a late prompt) and the layers below compute the
text alone, once: `lower_fn` computes them outside a training loop. See _causal_lm.py.
"""

import functools
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtpjax.pretrained import _bert as bert
from mtpjax.pretrained import _causal_lm as clm
from mtpjax.pretrained import _generate as gen
from mtpjax.pretrained import _scoring as scoring


def _bucket(n: int) -> int:
  """A padded length: a multiple of 8 up to 64, of 32 up to 256, then of 128."""
  step = 8 if n <= 64 else 32 if n <= 256 else 128
  return -(-max(n, 1) // step) * step


def _prompt_parts(prompt):
  if prompt is None:
    return None, None
  if not isinstance(prompt, dict) or set(prompt) - {"tokens", "prefix"}:
    raise ValueError(f"prompt must be a dict with 'tokens' and/or 'prefix', got "
                     f"{type(prompt).__name__}"
                     f"{'' if not isinstance(prompt, dict) else ' with ' + str(sorted(prompt))}")
  tokens, prefix = prompt.get("tokens"), prompt.get("prefix")
  return (None if tokens is None else jnp.asarray(tokens),
          None if prefix is None else jnp.asarray(prefix))


class CausalLM(NamedTuple):
  """A decoder checkpoint: family module, config, weights, tokenizer.

  insert_at: where prompt tokens go (1: after the BOS the tokenizer prepends; 0: first).
  """

  family: Any
  config: Any
  params: Any
  tokenizer: Any                # a `tokenizers.Tokenizer`
  pad_id: int
  insert_at: int
  path: str

  @property
  def width(self) -> int:
    """The embedding width d (a soft prompt token is [d])."""
    return self.config.hidden_size

  @property
  def eos_id(self) -> Optional[int]:
    return self.config.eos_token_id

  def token_embeddings(self):
    """The word embedding table [V, d] (prompt initialisation from vocabulary)."""
    return self.family.word_embeddings(self.params)

  # --- Tokens ---------------------------------------------------------------------------------

  def encode(self, text: str, *, add_special_tokens: bool = True) -> list:
    """The ids of one text as the tokenizer gives them (BOS where it prepends one)."""
    if not isinstance(text, str):
      raise TypeError(f"encode: expected a string, got {type(text).__name__}")
    return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def tokenize(self, texts: Sequence[str], max_len: Optional[int] = None, *,
               add_special_tokens: bool = True):
    """(ids [n, T] int32, mask [n, T] bool), right-padded with the pad id. T is max_len
    (longer texts keep their first max_len tokens) or, if None, the longest text's length."""
    if isinstance(texts, str):
      raise TypeError("tokenize: pass a list of texts, not a single string")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
      raise TypeError(f"tokenize: texts must be strings; item {bad[0]} is "
                      f"{type(texts[bad[0]]).__name__}")
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int)
                                or max_len < 1):
      raise ValueError(f"tokenize: max_len must be a positive integer, got {max_len!r}")
    enc = [e.ids for e in self.tokenizer.encode_batch(texts,
                                                      add_special_tokens=add_special_tokens)]
    width = max_len or max([len(e) for e in enc] + [1])
    ids = np.full((len(texts), width), self.pad_id, np.int32)
    mask = np.zeros((len(texts), width), bool)
    for i, e in enumerate(enc):
      e = e[:width]
      ids[i, :len(e)] = e
      mask[i, :len(e)] = True
    return ids, mask

  # --- Forward ----------------------------------------------------------------------------------

  def hidden_states(self, ids, mask, *, prompt=None, prefix_positions: str = "after",
                    entry_layer: int = 0, return_layers: bool = False):
    """Final hidden states [n, T (+ P), d] (numpy float32); with return_layers also the
    residual stream after every layer [L, n, T (+ P), d]."""
    ids, mask = _check_ids(ids, mask, self.config.vocab_size)
    tokens, prefix = _prompt_parts(prompt)
    fn = _jitted(self, "hidden", prefix_positions=prefix_positions,
                 return_layers=return_layers, entry_layer=entry_layer)
    out = fn(self.params, ids, mask, tokens, prefix)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), out)

  def logits(self, ids, mask, *, prompt=None, prefix_positions: str = "after",
             entry_layer: int = 0):
    """Next-token logits [n, T (+ P), V] float32 (numpy) at every position; with prompt
    tokens, their positions are included (they sit at insert_at)."""
    ids, mask = _check_ids(ids, mask, self.config.vocab_size)
    tokens, prefix = _prompt_parts(prompt)
    fn = _jitted(self, "logits", prefix_positions=prefix_positions, entry_layer=entry_layer)
    return np.asarray(fn(self.params, ids, mask, tokens, prefix), np.float32)

  # --- Generation -------------------------------------------------------------------------------

  def generate(self, ids, mask, *, max_new_tokens: int, prompt=None,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               stop_tokens: Sequence[int] = (), seed: int = 0,
               prefix_positions: str = "after", entry_layer: int = 0,
               return_logits: bool = False):
    """New token ids [n, max_new_tokens] int32 (numpy), decoded with the KV cache.

    Greedy at temperature 0 (the default), else sampled (top_k, top_p). Rows may be right-
    or left-padded: each is moved to start at slot 0. After one of `stop_tokens` a row
    emits the pad id; by default nothing stops (pass stop_tokens=(lm.eos_id,) to stop at
    EOS). One compile per (batch, bucketed length, max_new_tokens, settings).
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or (
        max_new_tokens < 1):
      raise ValueError(f"generate: max_new_tokens must be a positive integer, got "
                       f"{max_new_tokens!r}")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
      raise ValueError(f"generate: need temperature >= 0, 0 < top_p <= 1 and top_k >= 0, got "
                       f"{temperature}, {top_p}, {top_k}")
    ids, mask = _left_justified(*_check_ids(ids, mask, self.config.vocab_size), self.pad_id)
    ids, mask = _pad_to(ids, mask, _bucket(ids.shape[1]), self.pad_id)
    tokens, prefix = _prompt_parts(prompt)
    fn = _jitted(self, "generate", max_new_tokens=max_new_tokens,
                 temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                 stop_tokens=tuple(int(t) for t in stop_tokens),
                 prefix_positions=prefix_positions, return_logits=return_logits,
                 pad_id=self.pad_id, entry_layer=entry_layer)
    out = fn(self.params, ids, mask, tokens, prefix, jax.random.key(seed))
    return jax.tree.map(np.asarray, out)

  def generate_text(self, texts: Sequence[str], *, max_new_tokens: int, **kwargs):
    """generate() on texts, decoded (special tokens kept, output after a stop token cut)."""
    ids, mask = self.tokenize(texts)
    out = self.generate(ids, mask, max_new_tokens=max_new_tokens, **kwargs)
    stops = set(kwargs.get("stop_tokens", ()))
    texts_out = []
    for row in out:
      row = list(row)
      cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
      texts_out.append(self.decode(row[:cut]))
    return texts_out

  # --- Scoring ----------------------------------------------------------------------------------

  def label_ids(self, labels: Sequence[str], *, prefix: str = " "):
    """(ids [K, Tl], mask [K, Tl]) of `prefix + label` tokenized alone, no special tokens."""
    enc = [self.encode(prefix + l, add_special_tokens=False) for l in labels]
    if any(len(e) == 0 for e in enc):
      raise ValueError(f"label_ids: a label tokenizes to nothing: "
                       f"{[l for l, e in zip(labels, enc) if not e]}")
    width = max(len(e) for e in enc)
    ids = np.zeros((len(enc), width), np.int32)
    mask = np.zeros((len(enc), width), bool)
    for i, e in enumerate(enc):
      ids[i, :len(e)], mask[i, :len(e)] = e, True
    return ids, mask

  def score(self, contexts: Sequence[str], labels: Sequence[str], *, label_prefix: str = " ",
            normalize: str = "sum", prompt=None, prefix_positions: str = "after",
            entry_layer: int = 0, shared_context: Optional[str] = None):
    """log p(label_prefix + label | context) [n, K] float32 (numpy) for every context and
    candidate label; normalize="mean" divides by the label's token count (length-normalised
    log-likelihood). The context runs once and its cache is shared by the candidates.

    shared_context: a text every context continues (an episode's demonstrations): it runs
    once and `contexts` are the rest of each (see `shared_context` for the tokenization)."""
    label_ids, label_mask = self.label_ids(labels, prefix=label_prefix)
    tokens, prefix = _prompt_parts(prompt)
    fn = _jitted(self, "score", normalize=normalize, prefix_positions=prefix_positions,
                 entry_layer=entry_layer)
    if shared_context is None:
      ids, mask = self.tokenize(contexts)
      ids, mask = _pad_to(ids, mask, _bucket(ids.shape[1]), self.pad_id)
      return np.asarray(fn(self.params, ids, mask, label_ids, label_mask, tokens, prefix))
    (ids0, mask0), ids, mask = self.shared_context(shared_context, contexts)
    ids0, mask0 = _pad_to(ids0[None], mask0[None], _bucket(ids0.shape[0]), self.pad_id)
    ids, mask = _pad_to(ids, mask, _bucket(ids.shape[1]), self.pad_id)
    return np.asarray(fn(self.params, ids, mask, label_ids, label_mask, tokens, prefix,
                         (ids0[0], mask0[0])))

  def shared_context(self, shared: str, continuations: Sequence[str]):
    """((ids [S0], mask [S0]), ids [n, T], mask [n, T]) for scores_fn's `shared`: the shared
    text with the tokenizer's special tokens (BOS), each continuation without. The two are
    tokenized apart, so at the seam the tokens may differ from those of the joined text
    (end the shared text at a separator, "\n\n", where BPE merges do not cross)."""
    ids0, mask0 = self.tokenize([shared])
    ids, mask = self.tokenize(continuations, add_special_tokens=False)
    return (ids0[0], mask0[0]), ids, mask

  # --- Pure functions (for jit, grad and meta-learning) ------------------------------------------

  def scores_fn(self, *, normalize: str = "sum", prefix_positions: str = "after",
                entry_layer: int = 0):
    """f(params, ids, mask, label_ids, label_mask, prompt=None, lower=None, shared=None) ->
    [n, K] label log-likelihoods of right-padded contexts, traceable, differentiable in the
    prompt (and the weights). With entry_layer > 0, `lower` may hold the contexts' `lower_fn`
    states, computed once instead of at every call. With shared=(ids [S0], mask [S0]) (see
    `shared_context`), every row's context is that shared part followed by its own ids, and
    the shared part runs once (in-context demonstrations shared by an episode's queries)."""
    clm.check_entry_layer(self.config, entry_layer)
    _check_prefix_positions(prefix_positions)

    def f(params, ids, mask, label_ids, label_mask, prompt=None, lower=None, shared=None):
      tokens, prefix = _prompt_parts(prompt)
      per_token = scoring.label_log_likelihoods(
          self.family, self.config, params, ids, mask, label_ids, label_mask, tokens=tokens,
          prefix=prefix, insert_at=self.insert_at, prefix_positions=prefix_positions,
          entry_layer=entry_layer, lower=lower, shared=shared)
      return scoring.reduce(per_token, label_mask, normalize)
    return f

  def lower_fn(self, entry_layer: int):
    """f(params, ids, mask) -> what a prompt entering at `entry_layer` cannot change: the
    text's hidden states entering that layer {"h": [n, T, d]} and the lower layers' keys and
    values {"k", "v": [k, n, T, Hk, hd]}; pass it as `lower` to scores_fn's function."""
    if clm.check_entry_layer(self.config, entry_layer) == 0:
      raise ValueError("lower_fn: entry_layer must be >= 1 (at layer 0 nothing precedes the "
                       "prompt)")
    return functools.partial(clm.lower, self.family, self.config, entry_layer=entry_layer)

  def embed_fn(self, entry_layer: int = 0):
    """f(params, ids, mask, lower=None) -> [n, d]: a prompt-free representation of each text,
    the mean over its real tokens of the hidden states entering `entry_layer` (the word
    embeddings at 0). Instance-level ensembles and generated prompts read it (as they read
    the BERT encoder's `embed`)."""
    clm.check_entry_layer(self.config, entry_layer)

    def f(params, ids, mask, lower=None):
      m = jnp.asarray(mask, bool)
      if entry_layer == 0:
        h = bert.word_embeddings(self.family.word_embeddings(params), ids)
      else:
        h = (lower if lower is not None else clm.lower(self.family, self.config, params, ids,
                                                       m, entry_layer))["h"]
      return bert.pool(h.astype(jnp.float32), m, "mean", False)
    return f


def _check_prefix_positions(pp: str) -> str:
  if pp not in clm.PREFIX_POSITIONS:
    raise ValueError(f"prefix_positions must be one of {clm.PREFIX_POSITIONS}, got {pp!r}")
  return pp


def _check_ids(ids, mask, vocab: int):
  ids, mask = np.asarray(ids), np.asarray(mask)
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"token ids must be an integer array [n, T], got {ids.shape} {ids.dtype}")
  bert.check_token_ids(ids, vocab)
  if mask.shape != ids.shape:
    raise ValueError(f"mask {mask.shape} must have the shape of the ids {ids.shape}")
  mask = mask.astype(bool)
  if not mask.any(axis=1).all():
    raise ValueError(f"rows {np.flatnonzero(~mask.any(axis=1)).tolist()} have no real token; "
                     f"every row needs at least one (a BOS token for an empty context)")
  return ids.astype(np.int32), mask


def _left_justified(ids, mask, pad_id):
  """Rows moved so that their real tokens start at slot 0 (they must be contiguous)."""
  start = mask.argmax(axis=1)
  length = mask.sum(axis=1)
  contiguous = (np.arange(ids.shape[1])[None] - start[:, None] < length[:, None]) & (
      np.arange(ids.shape[1])[None] >= start[:, None])
  if not (contiguous == mask).all():
    raise ValueError("generate: each row's real tokens must be contiguous (left or right "
                     "padding)")
  if not start.any():
    return ids, mask
  idx = (np.arange(ids.shape[1])[None] + start[:, None]) % ids.shape[1]
  ids = np.take_along_axis(ids, idx, axis=1)
  mask = np.take_along_axis(mask, idx, axis=1)
  return np.where(mask, ids, pad_id).astype(np.int32), mask


def _pad_to(ids, mask, width, pad_id):
  if ids.shape[1] >= width:
    return ids, mask
  extra = width - ids.shape[1]
  return (np.pad(ids, ((0, 0), (0, extra)), constant_values=pad_id),
          np.pad(mask, ((0, 0), (0, extra))))


def _jitted(lm: CausalLM, what: str, **static):
  return _compiled(lm.family.__name__, lm.config, lm.insert_at, what,
                   tuple(sorted(static.items())))


@functools.lru_cache(maxsize=32)
def _compiled(family_name, config, insert_at, what, static):
  import importlib
  family = importlib.import_module(family_name)
  kw = dict(static)
  pp = _check_prefix_positions(kw.pop("prefix_positions", "after"))
  entry = clm.check_entry_layer(config, kw.pop("entry_layer", 0))

  if what in ("hidden", "logits"):
    def fn(params, ids, mask, tokens, prefix):
      out = clm.forward(family, config, params, ids, mask, tokens=tokens, insert_at=insert_at,
                        prefix=prefix, prefix_positions=pp, entry_layer=entry,
                        return_layers=kw.get("return_layers", False))
      return family.head(config, params, out) if what == "logits" else out
  elif what == "generate":
    def fn(params, ids, mask, tokens, prefix, key):
      return gen.generate(family, config, params, ids, mask, tokens=tokens, prefix=prefix,
                          insert_at=insert_at, prefix_positions=pp, key=key,
                          entry_layer=entry, **kw)
  elif what == "score":
    def fn(params, ids, mask, label_ids, label_mask, tokens, prefix, shared=None):
      per_token = scoring.label_log_likelihoods(
          family, config, params, ids, mask, label_ids, label_mask, tokens=tokens,
          prefix=prefix, insert_at=insert_at, prefix_positions=pp, entry_layer=entry, shared=shared)
      return scoring.reduce(per_token, label_mask, kw["normalize"])
  else:
    raise AssertionError(what)
  return jax.jit(fn)

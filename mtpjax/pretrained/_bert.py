"""BERT's encoder (post-LayerNorm blocks) as pure functions over a plain pytree, with prompts.

The parameters are the arrays of a Hugging Face `BertModel` under shorter names, with the
layers stacked on a leading axis (so the layers run as one lax.scan) and every kernel stored
[in, out]:

  {"embeddings": {"word": [V, d], "position": [P_max, d], "token_type": [types, d],
                  "ln_scale": [d], "ln_bias": [d]},
   "layers": {"query", "key", "value", "attn_out", "ffn_in", "ffn_out":
                  {"kernel": [L, in, out], "bias": [L, out]},
              "ln_attn", "ln_ffn": {"scale": [L, d], "bias": [L, d]}}}

x is an int array of token ids [n, T] as the tokenizer gives them: [CLS] text [SEP], then
padding (id `pad_id`, 0 for BERT), which is masked everywhere. What a prompt supplies (the
`context`, as for mj.transformer) is a dict with optional entries
  "tokens": [P, d] or [n, P, d]           prompt tokens, inserted right after [CLS]
  "prefix": [L - entry, 2, P', d] or [n, ...]  keys and values prepended in every layer from
                                          the entry layer on (P-tuning v2 deep prompts)

Prompt tokens enter at layer `entry_layer` ("late prompts", Liu et al. 2022):
  entry_layer = 0: they are input embeddings, in the word-embedding space, and take positions
    1..P like inserted words (the text moves to P+1...), the token-type-0 embedding and the
    embedding LayerNorm. So a prompt made of word embeddings (prompts.from_tokens) computes
    exactly the encoder on the text with those words inserted after [CLS].
  entry_layer = k > 0: they are hidden states inserted at the input of layer k; layers
    0..k-1 see the text alone, so `lower` computes them once per sentence and
    `hidden_states` takes that cache in place of the ids (Net.prepare builds it; see
    meta_learner(prepare=...)).
A prompt or prefix of length 0 computes exactly (bitwise) the plain encoder.
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtpjax.nn import _attention as attention
from mtpjax._src import types

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),      # BERT's exact (erf) GELU
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
POOLINGS = ("mean", "cls", "none")


def check_positive_fields(config, names, what: str) -> None:
  """ValueError naming the first of `names` that is not a positive int on `config` (a
  checkpoint's config dataclass; `what` prefixes the message)."""
  for name in names:
    v = getattr(config, name)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
      raise ValueError(f"{what}: {name} must be a positive integer, got {v!r}")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of a Hugging Face BERT `config.json` that the computation depends on."""

  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  pad_token_id: int = 0
  # RoBERTa numbers positions from padding_idx + 1 (its position table has that many unused
  # rows first); BERT from 0.
  position_offset: int = 0
  model_type: str = "bert"

  def __post_init__(self):
    check_positive_fields(self, ("vocab_size", "hidden_size", "num_hidden_layers",
                                 "num_attention_heads", "intermediate_size",
                                 "max_position_embeddings", "type_vocab_size"), "BERT config")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"BERT config: hidden_size {self.hidden_size} is not divisible by "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"BERT config: hidden_act {self.hidden_act!r} is not supported; "
                       f"supported: {sorted(ACTIVATIONS)}")
    if not 0 <= self.pad_token_id < self.vocab_size:
      raise ValueError(f"BERT config: pad_token_id {self.pad_token_id} is outside the "
                       f"vocabulary [0, {self.vocab_size})")

  @classmethod
  def from_dict(cls, d: dict) -> "BertConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in fields}
    if kw.get("pad_token_id") is None:
      kw.pop("pad_token_id", None)
    if d.get("model_type") == "roberta":
      kw["position_offset"] = kw.get("pad_token_id", 1) + 1
    return cls(**kw)

  @property
  def max_len(self) -> int:
    """The longest sequence the position table holds."""
    return self.max_position_embeddings - self.position_offset

  def param_shapes(self) -> dict:
    """The shape of every parameter, in the layout of this module's pytree."""
    d, f, n = self.hidden_size, self.intermediate_size, self.num_hidden_layers
    dense = {"query": (d, d), "key": (d, d), "value": (d, d), "attn_out": (d, d),
             "ffn_in": (d, f), "ffn_out": (f, d)}
    layers = {k: {"kernel": (n,) + s, "bias": (n, s[1])} for k, s in dense.items()}
    layers.update({k: {"scale": (n, d), "bias": (n, d)} for k in ("ln_attn", "ln_ffn")})
    return {"embeddings": {"word": (self.vocab_size, d),
                           "position": (self.max_position_embeddings, d),
                           "token_type": (self.type_vocab_size, d),
                           "ln_scale": (d,), "ln_bias": (d,)},
            "layers": layers}


def init_params(config: BertConfig, key: types.PRNGKey, *, std: float = 0.02) -> dict:
  """Random parameters as BERT initialises them (normal(0, 0.02), LayerNorms at identity)."""
  shapes = config.param_shapes()
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda s: isinstance(s, tuple))[0]]
  keys = jax.random.split(key, len(leaves))
  out = []
  for path, shape, k in zip(paths, leaves, keys):
    if "scale" in path:
      out.append(jnp.ones(shape, jnp.float32))
    elif "bias" in path:
      out.append(jnp.zeros(shape, jnp.float32))
    else:
      out.append(std * jax.random.normal(k, shape, jnp.float32))
  return jax.tree.unflatten(treedef, out)


def _lead(v, x):
  """v [..., d] with leading axes of size 1 up to x's rank (explicit broadcasting)."""
  return v.reshape((1,) * (x.ndim - v.ndim) + v.shape)


def layer_norm(x, scale, bias, eps):
  """LayerNorm over the last axis with the biased variance, as PyTorch computes it."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * _lead(scale, x) + _lead(bias, x)


def _dense(p, x):
  y = x @ p["kernel"]
  return y + _lead(p["bias"], y)


def _after_cls(a, inserted):
  """a [n, S, ...] with `inserted` [n, P, ...] placed right after position 0 ([CLS])."""
  return jnp.concatenate([a[:, :1], inserted.astype(a.dtype), a[:, 1:]], axis=1)


def _block(config: BertConfig, p, h, key_mask, prefix):
  """One post-LayerNorm block. h: [n, S, d]; key_mask: [n, S]; prefix: [n, 2, P, d] or None."""
  n, s, d = h.shape
  heads = config.num_attention_heads
  split = lambda a: a.reshape(n, s, heads, d // heads)
  q, k, v = (split(_dense(p[name], h)) for name in ("query", "key", "value"))
  k, v, key_mask = attention.with_prefix(k, v, key_mask, prefix)
  a = _dense(p["attn_out"], attention.attend(q, k, v, key_mask))
  h = layer_norm(h + a, p["ln_attn"]["scale"], p["ln_attn"]["bias"], config.layer_norm_eps)
  f = _dense(p["ffn_out"], ACTIVATIONS[config.hidden_act](_dense(p["ffn_in"], h)))
  return layer_norm(h + f, p["ln_ffn"]["scale"], p["ln_ffn"]["bias"], config.layer_norm_eps)


def _layers(config, layers, h, key_mask, prefix=None):
  """The stacked layers in `layers` (leading axis L') as one scan; prefix: [n, L', 2, P, d]."""
  if jax.tree.leaves(layers)[0].shape[0] == 0:
    return h
  if prefix is None or prefix.shape[-2] == 0:
    body = lambda c, p: (_block(config, p, c, key_mask, None), None)
    return jax.lax.scan(body, h, layers)[0]
  body = lambda c, pp: (_block(config, pp[0], c, key_mask, pp[1]), None)
  return jax.lax.scan(body, h, (layers, jnp.moveaxis(prefix, 1, 0)))[0]


def _slice_layers(layers, start, stop=None):
  return jax.tree.map(lambda a: a[start:stop], layers)


def text_mask(config: BertConfig, ids: types.Array) -> types.Array:
  """True at real tokens ([CLS], text, [SEP]), False at padding. ids: [n, T] -> [n, T]."""
  return ids != config.pad_token_id


def check_token_ids(ids, vocab: int) -> None:
  """Raises unless the concrete `ids` are integers in [0, vocab)."""
  concrete = np.asarray(ids)
  if not np.issubdtype(concrete.dtype, np.integer):
    raise ValueError(f"token ids must be integers, got dtype {concrete.dtype}")
  bad = (concrete < 0) | (concrete >= vocab)
  if bad.any():
    raise ValueError(f"token ids must be in [0, {vocab}) (the checkpoint's vocabulary), got "
                     f"{sorted(set(concrete[bad].tolist()))[:5]} ({int(bad.sum())} tokens); "
                     f"tokenize with the checkpoint's own tokenizer")


def word_embeddings(table: types.Array, ids: types.Array) -> types.Array:
  """Rows of the embedding table [vocab, d] for integer ids [...] -> [..., d].

  An id outside [0, vocab) raises in an eager call and gives NaN under jit (no host sync), so
  it cannot pass unseen: jnp.take would read -1 as the last token of the vocabulary.
  """
  vocab = table.shape[0]
  if not isinstance(ids, jax.core.Tracer):
    check_token_ids(ids, vocab)
  valid = (ids >= 0) & (ids < vocab)
  return jnp.where(valid[..., None], jnp.take(table, jnp.where(valid, ids, 0), axis=0), jnp.nan)


def embed(config: BertConfig, params, ids: types.Array,
          prompt: Optional[types.Array] = None,
          token_types: Optional[types.Array] = None) -> types.Array:
  """The embedding output LN(word + position + token type) [n, T (+ P), d].

  prompt: [n, P, d] input embeddings inserted after [CLS] (positions 1..P).
  token_types: [n, T] segment ids (a sentence pair's second text is 1); None: all 0.
  Positions run 0, 1, ... (RoBERTa: from padding_idx + 1) over the whole row: padding is
  on the right, so a real token's position is its index.
  """
  e = params["embeddings"]
  n, t = ids.shape
  x = word_embeddings(e["word"], ids)                                      # [n, T, d]
  if token_types is None:
    typed = _lead(e["token_type"][0], x)
  else:
    typed = jnp.take(e["token_type"], token_types, axis=0)
  if prompt is not None and prompt.shape[-2] > 0:
    x = _after_cls(x, prompt)
    if token_types is not None:
      typed = _after_cls(typed, jnp.broadcast_to(e["token_type"][0], prompt.shape))
  s = x.shape[1]
  if s > config.max_len:
    raise ValueError(f"{config.model_type}: {s} positions (text {t} + prompt {s - t}) exceed "
                     f"the checkpoint's position table of {config.max_len}; shorten max_len "
                     f"or the prompt")
  start = config.position_offset
  x = x + e["position"][None, start:start + s] + typed
  return layer_norm(x, e["ln_scale"], e["ln_bias"], config.layer_norm_eps)


def lower(config: BertConfig, params, ids: types.Array, entry_layer: int) -> types.Array:
  """Hidden states [n, T, d] at the input of layer `entry_layer`, computed on the text alone."""
  h = embed(config, params, ids)
  return _layers(config, _slice_layers(params["layers"], 0, entry_layer), h,
                 text_mask(config, ids))


def _check_context(config, context, entry_layer, n):
  tokens, prefix = context.get("tokens"), context.get("prefix")
  d, depth = config.hidden_size, config.num_hidden_layers - entry_layer
  if tokens is not None:
    if tokens.ndim not in (2, 3) or tokens.shape[-1] != d:
      raise ValueError(f"BERT: prompt tokens must be [P, {d}] or [n, P, {d}], got {tokens.shape}")
    tokens = attention.per_example(tokens, n, 2)
  if prefix is not None:
    if prefix.ndim not in (4, 5) or prefix.shape[-4:-2] != (depth, 2) or prefix.shape[-1] != d:
      raise ValueError(f"BERT: a prefix entering at layer {entry_layer} of "
                       f"{config.num_hidden_layers} must be [{depth}, 2, P, {d}] (or with a "
                       f"leading example axis), got {prefix.shape}")
    prefix = attention.per_example(prefix, n, 4)
  return tokens, prefix


def hidden_states(config: BertConfig, params, x, context=None, *, entry_layer: int = 0,
                  token_types=None):
  """The last layer's hidden states at the text positions [n, T, d], and the mask [n, T].

  x: token ids [n, T], or the cache {"ids": [n, T], "lower": [n, T, d]} from `lower` (only
  with entry_layer > 0). Prompt positions are computed but not returned.
  """
  ids = x["ids"] if isinstance(x, dict) else x
  n, t = ids.shape
  mask = text_mask(config, ids)
  tokens, prefix = _check_context(config, context or {}, entry_layer, n)
  p = 0 if tokens is None else tokens.shape[1]
  if entry_layer == 0:
    if isinstance(x, dict):
      raise ValueError("BERT: a cache of lower layers only exists for entry_layer > 0")
    h = embed(config, params, ids, tokens, token_types)
  else:
    h = x["lower"] if isinstance(x, dict) else lower(config, params, ids, entry_layer)
    if p > 0:
      if p + t > config.max_len:
        raise ValueError(f"BERT: text {t} + prompt {p} positions exceed the checkpoint's "
                         f"position table of {config.max_len}")
      h = _after_cls(h, tokens)
  key_mask = mask if p == 0 else _after_cls(mask, jnp.ones((n, p), bool))
  h = _layers(config, _slice_layers(params["layers"], entry_layer), h, key_mask, prefix)
  if p > 0:
    h = jnp.concatenate([h[:, :1], h[:, 1 + p:]], axis=1)
  return h, mask


def pool(h: types.Array, mask: types.Array, pooling: str, normalize: bool) -> types.Array:
  """Sentence embeddings [n, d] from hidden states [n, T, d] and the real-token mask [n, T].

  mean: the mean over real tokens ([CLS] and [SEP] included, as sentence-transformers does);
  cls: the [CLS] position; then L2 normalisation if `normalize`.
  """
  if pooling == "cls":
    out = h[:, 0]
  elif pooling == "mean":
    m = mask[..., None].astype(h.dtype)
    out = jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  else:
    raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
  if normalize:
    out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
  return out


def check_params(config: BertConfig, params: Any, what: str = "BERT parameters") -> None:
  """Raises naming every missing or wrongly shaped array (expected and found shapes)."""
  expected = config.param_shapes()
  problems = []

  def walk(exp, got, path):
    for k, v in exp.items():
      where = f"{path}/{k}" if path else k
      if not isinstance(got, dict) or k not in got:
        problems.append(f"{where}: missing")
      elif isinstance(v, dict):
        walk(v, got[k], where)
      elif tuple(getattr(got[k], "shape", ())) != v:
        problems.append(f"{where}: expected shape {v}, found {tuple(got[k].shape)}")

  walk(expected, params, "")
  if problems:
    raise ValueError(f"{what} do not fit the config: " + "; ".join(problems))


# --- The masked-LM head -----------------------------------------------------------------------

def mlm_logits(config: BertConfig, head, h: types.Array, word: types.Array) -> types.Array:
  """BertForMaskedLM's / RobertaForMaskedLM's head: dense, activation, LayerNorm, then the
  word embeddings (tied) plus a bias. head: {"dense": {"kernel", "bias"}, "ln": {"scale",
  "bias"}, "bias": [V]}; h [..., d] -> logits [..., V] float32."""
  x = ACTIVATIONS[config.hidden_act](_dense(head["dense"], h))
  x = layer_norm(x, head["ln"]["scale"], head["ln"]["bias"], config.layer_norm_eps)
  y = x @ word.T
  return (y + _lead(head["bias"], y)).astype(jnp.promote_types(y.dtype, jnp.float32))

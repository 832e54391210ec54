"""A small pre-LayerNorm Transformer encoder that takes prompts: prompt tokens prepended to the
sequence, and prefixes injected as extra keys/values in every layer.

x is an int array of token ids [n, T]; id 0 is padding. The context a prompt supplies is a
dict with optional entries
  "tokens": [P, width] or [n, P, width]            prompt tokens after CLS, before the text
  "prefix": [depth, 2, P', width] or [n, depth, 2, P', width]   per-layer keys and values
A prompt or prefix of length 0 (or no context) computes exactly the un-prompted encoder.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtpjax.nn import _attention as attention
from mtpjax.nn import _compose as nets

PAD_ID = 0
POOLING = ("cls", "mean")


class _Block(nn.Module):
  width: int
  heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x, key_mask, prefix=None):
    # x: [n, S, d]; key_mask: [n, S] True where a key may be attended; prefix: [n, 2, P, d].
    n, s, d = x.shape
    hd = d // self.heads
    h = nn.LayerNorm(name="ln_attn")(x)
    qkv = nn.Dense(3 * d, name="qkv")(h).reshape(n, s, 3, self.heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]           # [n, S, H, hd]
    k, v, key_mask = attention.with_prefix(k, v, key_mask, prefix)
    out = attention.attend(q, k, v, key_mask)                      # [n, S, d]
    x = x + nn.Dense(d, name="attn_out")(out)
    h = nn.LayerNorm(name="ln_mlp")(x)
    h = nn.Dense(self.mlp_dim, name="mlp_in")(h)
    h = nn.Dense(d, name="mlp_out")(nn.gelu(h))
    return x + h


class _Encoder(nn.Module):
  vocab_size: int
  width: int
  depth: int
  heads: int
  mlp_dim: int
  max_len: int
  pooling: str

  def setup(self):
    self.token_embed = nn.Embed(self.vocab_size, self.width,
                                embedding_init=nn.initializers.normal(0.02))
    self.pos_embed = self.param("pos_embed", nn.initializers.normal(0.02),
                                (self.max_len, self.width))
    if self.pooling == "cls":
      self.cls = self.param("cls", nn.initializers.normal(0.02), (self.width,))
    self.blocks = [_Block(self.width, self.heads, self.mlp_dim, name=f"block_{i}")
                   for i in range(self.depth)]
    self.ln_final = nn.LayerNorm()

  def embed(self, tokens):
    """Token embeddings without context, mean over real tokens: [n, width]."""
    mask = (tokens != PAD_ID)[..., None]
    e = self.token_embed(tokens)
    return jnp.sum(e * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)

  def __call__(self, tokens, context=None):
    n, t = tokens.shape
    context = context or {}
    mask = tokens != PAD_ID                                                  # [n, T]
    x = self.token_embed(tokens) + self.pos_embed[None, :t]                  # [n, T, d]
    parts, masks = [x], [mask]
    prompt = context.get("tokens")
    if prompt is not None and prompt.shape[-2] > 0:
      prompt = attention.per_example(prompt, n, 2)                                    # [n, P, d]
      parts.insert(0, prompt)
      masks.insert(0, jnp.ones(prompt.shape[:2], bool))
    if self.pooling == "cls":
      parts.insert(0, jnp.broadcast_to(self.cls, (n, 1, self.width)))
      masks.insert(0, jnp.ones((n, 1), bool))
    x = jnp.concatenate(parts, axis=1)
    key_mask = jnp.concatenate(masks, axis=1)
    prefix = context.get("prefix")
    if prefix is not None:
      prefix = attention.per_example(prefix, n, 4)                                    # [n, depth, 2, P, d]
    for i, block in enumerate(self.blocks):
      x = block(x, key_mask, None if prefix is None else prefix[:, i])
    x = self.ln_final(x)
    if self.pooling == "cls":
      return x[:, 0]
    text = x[:, -t:]                                                         # the text positions
    m = mask[..., None]
    return jnp.sum(text * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)


def transformer(vocab_size: int, *, width: int = 128, depth: int = 2, heads: int = 4,
                mlp_dim: Optional[int] = None, max_len: int = 128,
                pooling: str = "cls") -> nets.Net:
  """A pre-LayerNorm Transformer encoder over token ids, with prompt tokens and prefixes.

  Args:
    vocab_size: number of token ids (id 0 is padding).
    width: the model width.
    depth: the number of blocks.
    heads: attention heads per block.
    mlp_dim: the MLP's hidden width (default 4 * width).
    max_len: longest text (prompt tokens take no position).
    pooling: "cls" (a learned CLS token) or "mean" (mean over real text tokens).

  Returns:
    Net with init(key, tokens), apply(params, tokens, context=None) -> [n, width], and
    embed(params, tokens) -> [n, width] (context-free mean token embedding, for prompts that
    condition on the instance).

  >>> enc = transformer(100, width=32, depth=1, heads=2)
  >>> p = enc.init(jax.random.key(0), jnp.ones((2, 8), jnp.int32))
  >>> enc.apply(p, jnp.ones((2, 8), jnp.int32)).shape
  (2, 32)
  """
  for name, v in (("vocab_size", vocab_size), ("width", width), ("depth", depth),
                  ("heads", heads), ("max_len", max_len)):
    if int(v) <= 0:
      raise ValueError(f"transformer: {name} must be positive, got {v}")
  if width % heads:
    raise ValueError(f"transformer: width {width} must be divisible by heads {heads}")
  if pooling not in POOLING:
    raise ValueError(f"transformer: pooling must be one of {POOLING}, got {pooling!r}")
  module = _Encoder(vocab_size, width, depth, heads, mlp_dim or 4 * width, max_len, pooling)

  def init(key, tokens):
    if tokens.shape[-1] > max_len:
      raise ValueError(f"transformer: sequences of length {tokens.shape[-1]} exceed max_len {max_len}")
    return module.init(key, tokens)["params"]

  def apply(params, tokens, context=None):
    return module.apply({"params": params}, tokens, context)

  def embed(params, tokens):
    return module.apply({"params": params}, tokens, method=_Encoder.embed)

  return nets.Net(init, apply, width, embed)


def token_embeddings(params) -> jax.Array:
  """The encoder's token embedding table [vocab, width] (for prompt initialisation)."""
  return params["token_embed"]["embedding"]

"""The Llama family of decoders (Llama, Mistral, Qwen2, SmolLM) as a key map and a block.

Pre-RMSNorm blocks, grouped-query attention with RoPE (the config's base, Hugging Face's
half-split layout), a SwiGLU MLP, tied or untied embeddings; Qwen2's q/k/v biases. The
parameters are a plain pytree with the layers stacked on a leading axis (one lax.scan) and
every kernel stored [in, out]:

  {"embed": [V, d],
   "layers": {"attn_norm", "mlp_norm": [L, d],
              "q": {"kernel": [L, d, H hd]}, "k", "v": {"kernel": [L, d, Hk hd]},
              "o": {"kernel": [L, H hd, d]},          (+ "bias": [L, out] where the config has one)
              "gate", "up": {"kernel": [L, d, f]}, "down": {"kernel": [L, f, d]}},
   "norm": [d],
   "lm_head": [d, V]}                                  (absent with tied embeddings)

`from_hf` maps a transformers checkpoint's tensor names to it, `from_gguf` a llama.cpp file's
(undoing llama.cpp's row permutation of q and k). The sequence computation (masks, prompts, the
KV cache) is the causal LM's (_causal_lm.py); this module says what one block computes.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtpjax.nn import _attention as attention
from mtpjax.pretrained._bert import _lead, check_positive_fields

MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """The fields of a Llama-family `config.json` that the computation depends on."""

  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  intermediate_size: int
  head_dim: int
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  tie_word_embeddings: bool = False
  qkv_bias: bool = False        # Qwen2, or Llama's attention_bias (which adds o's bias too)
  o_bias: bool = False
  mlp_bias: bool = False
  bos_token_id: Optional[int] = None
  eos_token_id: Optional[int] = None
  pad_token_id: Optional[int] = None
  # Mistral's local attention: exact here for sequences up to the window, which the causal
  # LM checks (longer ones would need the banded mask).
  sliding_window: Optional[int] = None
  model_type: str = "llama"

  def __post_init__(self):
    check_positive_fields(self, ("vocab_size", "hidden_size", "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads",
                                 "intermediate_size", "head_dim", "max_position_embeddings"),
                          f"{self.model_type} config")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"{self.model_type} config: num_attention_heads "
                       f"{self.num_attention_heads} is not a multiple of num_key_value_heads "
                       f"{self.num_key_value_heads}")
    if self.head_dim % 2:
      raise ValueError(f"{self.model_type} config: RoPE needs an even head_dim, got "
                       f"{self.head_dim}")

  @classmethod
  def from_hf(cls, d: dict) -> "LlamaConfig":
    """From a transformers config.json (4.x `rope_theta` or 5.x `rope_parameters`)."""
    model_type = d.get("model_type", "llama")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
      raise ValueError(f"load: {model_type} with RoPE scaling {rope_type!r} is not supported "
                       f"(the default RoPE only)")
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    if d.get("hidden_act", "silu") != "silu":
      raise ValueError(f"load: {model_type} with hidden_act {d['hidden_act']!r} is not "
                       f"supported (silu)")
    window = d.get("sliding_window") if (model_type == "mistral" or
                                         d.get("use_sliding_window")) else None
    heads = d["num_attention_heads"]
    qwen = model_type == "qwen2"
    return cls(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=d.get("num_key_value_heads") or heads,
        intermediate_size=d["intermediate_size"],
        head_dim=d.get("head_dim") or d["hidden_size"] // heads,
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=float(theta),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=qwen or bool(d.get("attention_bias", False)),
        o_bias=not qwen and bool(d.get("attention_bias", False)),
        mlp_bias=bool(d.get("mlp_bias", False)),
        bos_token_id=_single_id(d.get("bos_token_id")),
        eos_token_id=_single_id(d.get("eos_token_id")),
        pad_token_id=_single_id(d.get("pad_token_id")), sliding_window=window,
        model_type=model_type)

  @classmethod
  def from_gguf(cls, meta: dict, *, tied: bool) -> "LlamaConfig":
    """From a llama.cpp file's metadata (`llama.*` keys)."""
    g = lambda k, default=None: meta.get(f"llama.{k}", default)
    heads = int(g("attention.head_count"))
    d = int(g("embedding_length"))
    head_dim = int(g("attention.key_length", d // heads))
    if int(g("rope.dimension_count", head_dim)) != head_dim:
      raise ValueError("load: partial RoPE (rope.dimension_count below the head size) is not "
                       "supported")
    if g("rope.scaling.type") not in (None, "none"):
      raise ValueError(f"load: RoPE scaling {g('rope.scaling.type')!r} is not supported")
    return cls(
        vocab_size=int(g("vocab_size", len(meta.get("tokenizer.ggml.tokens", ())))),
        hidden_size=d, num_hidden_layers=int(g("block_count")), num_attention_heads=heads,
        num_key_value_heads=int(g("attention.head_count_kv", heads)),
        intermediate_size=int(g("feed_forward_length")), head_dim=head_dim,
        max_position_embeddings=int(g("context_length", 2048)),
        rms_norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(g("rope.freq_base", 10000.0)), tie_word_embeddings=tied,
        bos_token_id=_opt_int(meta.get("tokenizer.ggml.bos_token_id")),
        eos_token_id=_opt_int(meta.get("tokenizer.ggml.eos_token_id")),
        pad_token_id=_opt_int(meta.get("tokenizer.ggml.padding_token_id")))

  @property
  def kv_dim(self) -> int:
    """The width of one layer's keys (and values): key heads x head size."""
    return self.num_key_value_heads * self.head_dim

  def param_shapes(self) -> dict:
    d, f, n, v = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
    qd, kd = self.num_attention_heads * self.head_dim, self.kv_dim
    dense = lambda i, o, bias: ({"kernel": (n, i, o), "bias": (n, o)} if bias
                                else {"kernel": (n, i, o)})
    layers = {"attn_norm": (n, d), "mlp_norm": (n, d),
              "q": dense(d, qd, self.qkv_bias), "k": dense(d, kd, self.qkv_bias),
              "v": dense(d, kd, self.qkv_bias), "o": dense(qd, d, self.o_bias),
              "gate": dense(d, f, self.mlp_bias), "up": dense(d, f, self.mlp_bias),
              "down": dense(f, d, self.mlp_bias)}
    out = {"embed": (v, d), "layers": layers, "norm": (d,)}
    if not self.tie_word_embeddings:
      out["lm_head"] = (d, v)
    return out


def _single_id(v):
  """A token id from config.json, where eos_token_id may be a list (the first one)."""
  if isinstance(v, (list, tuple)):
    return int(v[0]) if v else None
  return None if v is None else int(v)


def _opt_int(v):
  return None if v is None else int(np.asarray(v).reshape(-1)[0])


# --- The key maps -----------------------------------------------------------------------------

HF_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
            "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
            "down": "mlp.down_proj"}
HF_NORMS = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
GGUF_NAMES = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output",
              "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}
GGUF_NORMS = {"attn_norm": "attn_norm", "mlp_norm": "ffn_norm"}


def from_hf(config: LlamaConfig, get) -> dict:
  """The pytree from a transformers checkpoint. get(name, shape) returns the named tensor
  checked against `shape` (nn.Linear's [out, in]); kernels are transposed to [in, out]."""
  shapes = config.param_shapes()
  per_layer = []
  for i in range(config.num_hidden_layers):
    pre = f"model.layers.{i}."
    layer = {k: get(pre + hf + ".weight", shapes["layers"][k][1:]) for k, hf in HF_NORMS.items()}
    for k, hf in HF_NAMES.items():
      shape = shapes["layers"][k]
      layer[k] = {"kernel": get(pre + hf + ".weight", shape["kernel"][:0:-1]).T}
      if "bias" in shape:
        layer[k]["bias"] = get(pre + hf + ".bias", shape["bias"][1:])
    per_layer.append(layer)
  out = {"embed": get("model.embed_tokens.weight", shapes["embed"]),
         "layers": jax.tree.map(lambda *a: np.stack(a), *per_layer),
         "norm": get("model.norm.weight", shapes["norm"])}
  if not config.tie_word_embeddings:
    out["lm_head"] = get("lm_head.weight", shapes["lm_head"][::-1]).T
  return out


def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
  """Undo llama.cpp's reordering of q_proj / k_proj rows ([out, in]): per head, the converter
  moved row i to 2i and row i + hd/2 to 2i + 1 so that GGML's interleaved RoPE matches
  transformers' half-split one. transformers' `_reverse_permute_weights` does the same."""
  out, inp = w.shape
  return w.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def from_gguf(config: LlamaConfig, get) -> dict:
  """The pytree from a llama.cpp GGUF file. get(name, shape) returns the dequantized tensor
  as [out, in] (GGUF lists shapes innermost first; the reader reverses them)."""
  shapes = config.param_shapes()
  per_layer = []
  for i in range(config.num_hidden_layers):
    pre = f"blk.{i}."
    layer = {k: get(pre + g + ".weight", shapes["layers"][k][1:]) for k, g in GGUF_NORMS.items()}
    for k, g in GGUF_NAMES.items():
      shape = shapes["layers"][k]
      w = get(pre + g + ".weight", shape["kernel"][:0:-1])
      if k == "q":
        w = unpermute_rows(w, config.num_attention_heads)
      elif k == "k":
        w = unpermute_rows(w, config.num_key_value_heads)
      layer[k] = {"kernel": w.T}
      if "bias" in shape:
        b = get(pre + g + ".bias", shape["bias"][1:])
        if k in ("q", "k"):
          heads = config.num_attention_heads if k == "q" else config.num_key_value_heads
          b = unpermute_rows(b[:, None], heads)[:, 0]
        layer[k]["bias"] = b
    per_layer.append(layer)
  out = {"embed": get("token_embd.weight", shapes["embed"]),
         "layers": jax.tree.map(lambda *a: np.stack(a), *per_layer),
         "norm": get("output_norm.weight", shapes["norm"])}
  if not config.tie_word_embeddings:
    out["lm_head"] = get("output.weight", shapes["lm_head"][::-1]).T
  return out


# --- One block --------------------------------------------------------------------------------

def rms_norm(x, scale, eps):
  """x / rms(x) * scale, computed in float32 as transformers' LlamaRMSNorm does."""
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return y.astype(x.dtype) * _lead(scale.astype(x.dtype), y)


def _dense(p, x):
  y = x @ p["kernel"].astype(x.dtype)
  return y + _lead(p["bias"].astype(x.dtype), y) if "bias" in p else y


def embed(config: LlamaConfig, params, x, positions):
  """The residual stream's input: the token (or prompt) embeddings; positions enter by RoPE."""
  del config, params, positions
  return x


def qkv(config: LlamaConfig, p, h, positions):
  """One layer's queries [n, S, H, hd] and keys and values [n, S, Hk, hd], RoPE applied."""
  n, s, _ = h.shape
  x = rms_norm(h, p["attn_norm"], config.rms_norm_eps)
  hd = config.head_dim
  q = _dense(p["q"], x).reshape(n, s, config.num_attention_heads, hd)
  k = _dense(p["k"], x).reshape(n, s, config.num_key_value_heads, hd)
  v = _dense(p["v"], x).reshape(n, s, config.num_key_value_heads, hd)
  return (attention.rope(q, positions, config.rope_theta),
          attention.rope(k, positions, config.rope_theta), v)


def block_out(config: LlamaConfig, p, h, attended):
  """The rest of the block after attention: h + o(attn), then h + down(silu(gate) * up)."""
  h = h + _dense(p["o"], attended)
  x = rms_norm(h, p["mlp_norm"], config.rms_norm_eps)
  return h + _dense(p["down"], jax.nn.silu(_dense(p["gate"], x)) * _dense(p["up"], x))


def final(config: LlamaConfig, params, h):
  return rms_norm(h, params["norm"], config.rms_norm_eps)


def head(config: LlamaConfig, params, h):
  """Next-token logits [..., V] (float32, or float64 under x64) of final hidden states."""
  w = params["embed"].T if config.tie_word_embeddings else params["lm_head"]
  return (h @ w.astype(h.dtype)).astype(jnp.promote_types(h.dtype, jnp.float32))


def word_embeddings(params):
  return params["embed"]

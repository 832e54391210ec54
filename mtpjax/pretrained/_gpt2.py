"""GPT-2 as a key map and a block: learned positions, pre-LayerNorm blocks, gelu_new.

The parameters, layers stacked on a leading axis and every kernel [in, out] (GPT-2's Conv1D
already stores them so):

  {"wte": [V, d], "wpe": [P_max, d],
   "layers": {"ln_1", "ln_2": {"scale", "bias": [L, d]},
              "attn": {"kernel": [L, d, 3d], "bias": [L, 3d]},   (q, k, v along the output)
              "proj": {"kernel": [L, d, d], "bias"}, "fc": {"kernel": [L, d, f], "bias"},
              "fc_proj": {"kernel": [L, f, d], "bias"}},
   "ln_f": {"scale", "bias": [d]}}

The LM head is tied to `wte` (GPT2LMHeadModel saves no separate one).
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtpjax.pretrained import _bert as bert

MODEL_TYPES = ("gpt2",)
ACTIVATIONS = {"gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
               "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
               "gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "relu": jax.nn.relu}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """The fields of a GPT-2 `config.json` that the computation depends on."""

  vocab_size: int
  n_embd: int
  n_layer: int
  n_head: int
  n_positions: int = 1024
  n_inner: Optional[int] = None
  layer_norm_epsilon: float = 1e-5
  activation_function: str = "gelu_new"
  bos_token_id: Optional[int] = None
  eos_token_id: Optional[int] = None
  pad_token_id: Optional[int] = None
  model_type: str = "gpt2"

  def __post_init__(self):
    bert.check_positive_fields(self, ("vocab_size", "n_embd", "n_layer", "n_head",
                                      "n_positions"), "gpt2 config")
    if self.n_embd % self.n_head:
      raise ValueError(f"gpt2 config: n_embd {self.n_embd} is not divisible by n_head "
                       f"{self.n_head}")
    if self.activation_function not in ACTIVATIONS:
      raise ValueError(f"gpt2 config: activation_function {self.activation_function!r} is not "
                       f"supported; supported: {sorted(ACTIVATIONS)}")

  @classmethod
  def from_hf(cls, d: dict) -> "GPT2Config":
    if d.get("scale_attn_by_inverse_layer_idx") or d.get("reorder_and_upcast_attn"):
      raise ValueError("load: gpt2 with scale_attn_by_inverse_layer_idx or "
                       "reorder_and_upcast_attn is not supported")
    if d.get("scale_attn_weights", True) is False:
      raise ValueError("load: gpt2 with scale_attn_weights=False is not supported")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in fields})

  # The names the causal LM reads, shared with the Llama family.
  @property
  def hidden_size(self) -> int:
    return self.n_embd

  @property
  def num_hidden_layers(self) -> int:
    return self.n_layer

  @property
  def num_attention_heads(self) -> int:
    return self.n_head

  @property
  def num_key_value_heads(self) -> int:
    return self.n_head

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @property
  def kv_dim(self) -> int:
    return self.n_embd

  @property
  def max_position_embeddings(self) -> int:
    return self.n_positions

  sliding_window = None

  def param_shapes(self) -> dict:
    d, n, f = self.n_embd, self.n_layer, self.n_inner or 4 * self.n_embd
    dense = lambda i, o: {"kernel": (n, i, o), "bias": (n, o)}
    ln = {"scale": (n, d), "bias": (n, d)}
    return {"wte": (self.vocab_size, d), "wpe": (self.n_positions, d),
            "layers": {"ln_1": ln, "ln_2": dict(ln), "attn": dense(d, 3 * d),
                       "proj": dense(d, d), "fc": dense(d, f), "fc_proj": dense(f, d)},
            "ln_f": {"scale": (d,), "bias": (d,)}}


HF_NAMES = {"ln_1": "ln_1", "ln_2": "ln_2", "attn": "attn.c_attn", "proj": "attn.c_proj",
            "fc": "mlp.c_fc", "fc_proj": "mlp.c_proj"}


def from_hf(config: GPT2Config, get) -> dict:
  """The pytree from a transformers GPT-2 checkpoint (names with or without "transformer.";
  Conv1D weights are already [in, out])."""
  shapes = config.param_shapes()
  per_layer = []
  for i in range(config.n_layer):
    pre = f"h.{i}."
    layer = {}
    for k, hf in HF_NAMES.items():
      s = shapes["layers"][k]
      if k.startswith("ln"):
        layer[k] = {"scale": get(pre + hf + ".weight", s["scale"][1:]),
                    "bias": get(pre + hf + ".bias", s["bias"][1:])}
      else:
        layer[k] = {"kernel": get(pre + hf + ".weight", s["kernel"][1:]),
                    "bias": get(pre + hf + ".bias", s["bias"][1:])}
    per_layer.append(layer)
  return {"wte": get("wte.weight", shapes["wte"]), "wpe": get("wpe.weight", shapes["wpe"]),
          "layers": jax.tree.map(lambda *a: np.stack(a), *per_layer),
          "ln_f": {"scale": get("ln_f.weight", shapes["ln_f"]["scale"]),
                   "bias": get("ln_f.bias", shapes["ln_f"]["bias"])}}


def _dense(p, x):
  y = x @ p["kernel"].astype(x.dtype)
  return y + bert._lead(p["bias"].astype(x.dtype), y)


def _ln(p, x, eps):
  return bert.layer_norm(x, p["scale"].astype(x.dtype), p["bias"].astype(x.dtype), eps)


def embed(config: GPT2Config, params, x, positions):
  """Token (or prompt) embeddings plus the learned position embeddings."""
  return x + jnp.take(params["wpe"], positions, axis=0).astype(x.dtype)


def qkv(config: GPT2Config, p, h, positions):
  del positions
  n, s, d = h.shape
  a = _dense(p["attn"], _ln(p["ln_1"], h, config.layer_norm_epsilon))
  split = lambda t: t.reshape(n, s, config.n_head, d // config.n_head)
  return split(a[..., :d]), split(a[..., d:2 * d]), split(a[..., 2 * d:])


def block_out(config: GPT2Config, p, h, attended):
  h = h + _dense(p["proj"], attended)
  x = _ln(p["ln_2"], h, config.layer_norm_epsilon)
  return h + _dense(p["fc_proj"], ACTIVATIONS[config.activation_function](_dense(p["fc"], x)))


def final(config: GPT2Config, params, h):
  return _ln(params["ln_f"], h, config.layer_norm_epsilon)


def head(config: GPT2Config, params, h):
  return (h @ params["wte"].T.astype(h.dtype)).astype(jnp.promote_types(h.dtype, jnp.float32))


def word_embeddings(params):
  return params["wte"]

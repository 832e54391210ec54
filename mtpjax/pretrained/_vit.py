"""ViT and DINOv2 as a key map and a block, with visual prompt tokens (VPT).

Images are NHWC float32, already preprocessed (see _images.preprocess). The parameters,
layers stacked on a leading axis and every kernel [in, out]:

  {"patch": {"kernel": [p, p, C, d], "bias": [d]}, "cls": [d], "pos": [1 + N, d],
   "layers": {"ln1", "ln2": {"scale", "bias": [L, d]},
              "q", "k", "v", "o": {"kernel": [L, d, d], "bias": [L, d]},
              "fc1": {"kernel": [L, d, f], "bias"}, "fc2": {"kernel": [L, f', d], "bias"},
              "ls1", "ls2": [L, d] (DINOv2's layer scale)},
   "ln": {"scale", "bias": [d]},
   "pooler": {"kernel": [d, d], "bias"} (ViTModel), "classifier": {"kernel": [d, K], "bias"}}

DINOv2's SwiGLU MLP keeps its fused input projection as fc1 (f = 2 f'; the first f' outputs
are the SiLU-gated half). The position table is resized (bicubic, as PyTorch computes it
with align_corners=False) when the patch grid differs from the checkpoint's.

Prompts (a dict, like the text models'), entering at layer `entry_layer` k:
  tokens [P, d] or [n, P, d]   VPT-shallow: tokens inserted right after the class token
                               (no position embedding is added to them);
  deep   [L - k, P, d] or [n, ...]   VPT-deep as published (Jia et al. 2022): fresh tokens
                               in every layer, replacing what the layer below left at the
                               prompt positions, so published VPT-deep settings transfer;
  prefix [L - k, 2, P, d] or [n, ...]   keys and values prepended in every layer (P-tuning
                               v2), the other way to prompt every layer.
The class token after the final LayerNorm (or the ViT pooler on it, where the checkpoint has
one) is the pooled feature; a prompt of length 0 computes exactly the plain model.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mtpjax.nn import _attention as attention
from mtpjax.pretrained import _bert as bert

MODEL_TYPES = ("vit", "dinov2")
ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
               "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
               "relu": jax.nn.relu, "silu": jax.nn.silu}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """The fields of a ViT or DINOv2 `config.json` that the computation depends on."""

  model_type: str
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  patch_size: int
  image_size: int
  num_channels: int = 3
  layer_norm_eps: float = 1e-12
  qkv_bias: bool = True
  hidden_act: str = "gelu"
  layer_scale: bool = False     # DINOv2
  swiglu: bool = False          # DINOv2 with use_swiglu_ffn
  pooler: bool = False          # ViTModel's tanh pooler on the class token
  num_labels: int = 0           # a classifier on the pooled feature, when > 0

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"ViTConfig: model_type must be one of {MODEL_TYPES}, got "
                       f"{self.model_type!r}")
    bert.check_positive_fields(self, ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                      "intermediate_size", "patch_size", "image_size",
                                      "num_channels"), self.model_type)
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"{self.model_type}: hidden_act {self.hidden_act!r} is not supported; "
                       f"supported: {sorted(ACTIVATIONS)}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"{self.model_type}: hidden_size {self.hidden_size} is not a multiple "
                       f"of num_attention_heads {self.num_attention_heads}")

  @classmethod
  def from_hf(cls, d: dict, *, pooler: bool, num_labels: int) -> "ViTConfig":
    dino = d["model_type"] == "dinov2"
    hidden = d["hidden_size"]
    if dino:
      inter = int(hidden * d.get("mlp_ratio", 4))
    else:
      inter = d["intermediate_size"]
    if d.get("num_channels", 3) <= 0 or d["patch_size"] <= 0:
      raise ValueError(f"{d['model_type']}: patch_size and num_channels must be positive")
    return cls(model_type=d["model_type"], hidden_size=hidden,
               num_hidden_layers=d["num_hidden_layers"],
               num_attention_heads=d["num_attention_heads"], intermediate_size=inter,
               patch_size=d["patch_size"], image_size=d["image_size"],
               num_channels=d.get("num_channels", 3),
               layer_norm_eps=d.get("layer_norm_eps", 1e-6 if dino else 1e-12),
               qkv_bias=d.get("qkv_bias", True), hidden_act=d.get("hidden_act", "gelu"),
               layer_scale=dino, swiglu=bool(dino and d.get("use_swiglu_ffn", False)),
               pooler=pooler, num_labels=num_labels)

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def ffn_hidden(self) -> int:
    """The MLP's hidden width (SwiGLU: rounded to a multiple of 8 as DINOv2 does)."""
    if self.swiglu:
      return (int(self.intermediate_size * 2 / 3) + 7) // 8 * 8
    return self.intermediate_size

  def param_shapes(self) -> dict:
    d, n, p, c = self.hidden_size, self.num_hidden_layers, self.patch_size, self.num_channels
    f = self.ffn_hidden
    dense = lambda i, o: {"kernel": (n, i, o), "bias": (n, o)}
    ln = {"scale": (n, d), "bias": (n, d)}
    layers = {"ln1": ln, "ln2": dict(ln), "q": dense(d, d), "k": dense(d, d), "v": dense(d, d),
              "o": dense(d, d), "fc1": dense(d, 2 * f if self.swiglu else f),
              "fc2": dense(f, d)}
    if self.layer_scale:
      layers.update(ls1=(n, d), ls2=(n, d))
    shapes = {"patch": {"kernel": (p, p, c, d), "bias": (d,)}, "cls": (d,),
              "pos": (1 + self.grid ** 2, d), "layers": layers,
              "ln": {"scale": (d,), "bias": (d,)}}
    if self.pooler:
      shapes["pooler"] = {"kernel": (d, d), "bias": (d,)}
    if self.num_labels:
      shapes["classifier"] = {"kernel": (d, self.num_labels), "bias": (self.num_labels,)}
    return shapes


def from_hf(config: ViTConfig, get) -> dict:
  """The pytree from a transformers ViT / DINOv2 checkpoint ("vit." / "dinov2." stripped);
  get(name, shape) reads one tensor ([out, in] Linear, [out, in, kh, kw] Conv2d)."""
  d, p, c = config.hidden_size, config.patch_size, config.num_channels
  f = config.ffn_hidden
  lin = lambda name, i, o, bias=True: {
      "kernel": get(name + ".weight", (o, i)).T,
      "bias": get(name + ".bias", (o,)) if bias else np.zeros((o,), np.float32)}
  ln = lambda name: {"scale": get(name + ".weight", (d,)), "bias": get(name + ".bias", (d,))}
  per_layer = []
  for i in range(config.num_hidden_layers):
    pre = f"encoder.layer.{i}."
    att = pre + "attention."
    layer = {"q": lin(att + "attention.query", d, d, config.qkv_bias),
             "k": lin(att + "attention.key", d, d, config.qkv_bias),
             "v": lin(att + "attention.value", d, d, config.qkv_bias),
             "o": lin(att + "output.dense", d, d)}
    if config.model_type == "vit":
      layer.update(ln1=ln(pre + "layernorm_before"), ln2=ln(pre + "layernorm_after"),
                   fc1=lin(pre + "intermediate.dense", d, f), fc2=lin(pre + "output.dense", f, d))
    else:
      mlp = ("mlp.weights_in", "mlp.weights_out") if config.swiglu else ("mlp.fc1", "mlp.fc2")
      layer.update(ln1=ln(pre + "norm1"), ln2=ln(pre + "norm2"),
                   fc1=lin(pre + mlp[0], d, 2 * f if config.swiglu else f),
                   fc2=lin(pre + mlp[1], f, d),
                   ls1=get(pre + "layer_scale1.lambda1", (d,)),
                   ls2=get(pre + "layer_scale2.lambda1", (d,)))
    per_layer.append(layer)
  conv = get("embeddings.patch_embeddings.projection.weight", (d, c, p, p))
  params = {"patch": {"kernel": conv.transpose(2, 3, 1, 0),
                      "bias": get("embeddings.patch_embeddings.projection.bias", (d,))},
            "cls": get("embeddings.cls_token", (1, 1, d)).reshape(d),
            "pos": get("embeddings.position_embeddings",
                       (1, 1 + config.grid ** 2, d)).reshape(-1, d),
            "layers": jax.tree.map(lambda *a: np.stack(a), *per_layer),
            "ln": ln("layernorm")}
  if config.pooler:
    params["pooler"] = lin("pooler.dense", d, d)
  if config.num_labels:
    params["classifier"] = lin("classifier", d, config.num_labels)
  return params


# --- The computation ---------------------------------------------------------------------------

def _dense(p, x):
  y = x @ p["kernel"]
  return y + bert._lead(p["bias"], y)


def _cubic_weights(t, a=-0.75):
  """The 4 bicubic convolution weights (Keys, a = -0.75 as PyTorch) at fractional offset t."""
  def near(x):
    return ((a + 2) * x - (a + 3)) * x * x + 1
  def far(x):
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)


def _resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[out, in]: PyTorch's bicubic resize along one axis (align_corners=False, borders
  clamped), as a matrix."""
  scale = size_in / size_out
  src = (np.arange(size_out) + 0.5) * scale - 0.5
  base = np.floor(src)
  w = _cubic_weights(src - base)
  m = np.zeros((size_out, size_in))
  for j in range(4):
    idx = np.clip(base.astype(int) - 1 + j, 0, size_in - 1)
    np.add.at(m, (np.arange(size_out), idx), w[:, j])
  return m


def position_table(config: ViTConfig, params, gh: int, gw: int):
  """The position embeddings [1 + gh gw, d] for a gh x gw patch grid: the checkpoint's, or
  its patch part resized bicubically (PyTorch's interpolate, align_corners=False)."""
  pos = params["pos"]
  g = config.grid
  if (gh, gw) == (g, g):
    return pos
  patch = pos[1:].reshape(g, g, -1)
  rh = jnp.asarray(_resize_matrix(g, gh), pos.dtype)
  rw = jnp.asarray(_resize_matrix(g, gw), pos.dtype)
  patch = jnp.einsum("ab,bcd,ec->aed", rh, patch, rw, precision="highest")
  return jnp.concatenate([pos[:1], patch.reshape(gh * gw, -1)], axis=0)


def check_images(config: ViTConfig, images) -> None:
  p = config.patch_size
  if images.ndim != 4 or images.shape[-1] != config.num_channels:
    raise ValueError(f"{config.model_type}: images must be [n, H, W, {config.num_channels}] "
                     f"(NHWC), got {images.shape}")
  if images.shape[1] % p or images.shape[2] % p:
    raise ValueError(f"{config.model_type}: image height and width must be multiples of the "
                     f"patch size {p}, got {images.shape[1]}x{images.shape[2]}")


def embed(config: ViTConfig, params, images):
  """The class token and patch embeddings with their positions [n, 1 + N, d]."""
  check_images(config, images)
  p = config.patch_size
  x = jax.lax.conv_general_dilated(images, params["patch"]["kernel"], (p, p), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  n, gh, gw, d = x.shape
  x = x.reshape(n, gh * gw, d) + params["patch"]["bias"][None, None]
  cls = jnp.broadcast_to(params["cls"], (n, 1, d))
  return jnp.concatenate([cls, x], axis=1) + position_table(config, params, gh, gw)[None]


def _block(config: ViTConfig, p, h, prefix):
  n, s, d = h.shape
  heads = config.num_attention_heads
  x = bert.layer_norm(h, p["ln1"]["scale"], p["ln1"]["bias"], config.layer_norm_eps)
  split = lambda t: t.reshape(n, s, heads, d // heads)
  q, k, v = (split(_dense(p[name], x)) for name in ("q", "k", "v"))
  k, v, mask = attention.with_prefix(k, v, jnp.ones((n, s), bool), prefix)
  a = _dense(p["o"], attention.attend(q, k, v, mask))
  h = h + (a * p["ls1"][None, None] if config.layer_scale else a)
  x = bert.layer_norm(h, p["ln2"]["scale"], p["ln2"]["bias"], config.layer_norm_eps)
  x = _dense(p["fc1"], x)
  if config.swiglu:
    g, u = jnp.split(x, 2, axis=-1)
    x = jax.nn.silu(g) * u
  else:
    x = ACTIVATIONS[config.hidden_act](x)
  f = _dense(p["fc2"], x)
  return h + (f * p["ls2"][None, None] if config.layer_scale else f)


def _layers(params, lo, hi=None):
  return jax.tree.map(lambda a: a[lo:hi], params["layers"])


def lower(config: ViTConfig, params, images, entry_layer: int):
  """What a prompt entering at `entry_layer` cannot change: the stream [n, 1 + N, d]
  entering that layer, computed on the image alone."""
  h = embed(config, params, images)
  h, _ = jax.lax.scan(lambda h, lp: (_block(config, lp, h, None), None), h,
                      _layers(params, 0, entry_layer))
  return h


def _check_prompt(config, prompt, entry_layer, n):
  prompt = dict(prompt or {})
  unknown = set(prompt) - {"tokens", "deep", "prefix"}
  if unknown:
    raise ValueError(f"{config.model_type}: a visual prompt is a dict with 'tokens', 'deep' "
                     f"and/or 'prefix', got keys {sorted(unknown)}")
  d, depth = config.hidden_size, config.num_hidden_layers - entry_layer
  tokens, deep, prefix = (prompt.get(k) for k in ("tokens", "deep", "prefix"))
  if tokens is not None and (tokens.ndim not in (2, 3) or tokens.shape[-1] != d):
    raise ValueError(f"{config.model_type}: prompt tokens must be [P, {d}] or [n, P, {d}], "
                     f"got {tokens.shape}")
  if deep is not None and (deep.ndim not in (3, 4) or deep.shape[-1] != d
                           or deep.shape[-3] != depth):
    raise ValueError(f"{config.model_type}: deep prompt tokens entering at layer "
                     f"{entry_layer} must be [{depth}, P, {d}] or with a leading example "
                     f"axis, got {deep.shape}")
  if deep is not None and tokens is not None:
    raise ValueError(f"{config.model_type}: give 'tokens' (VPT-shallow) or 'deep' (VPT-deep, "
                     f"whose first layer's tokens are the shallow ones), not both")
  if prefix is not None and (prefix.ndim not in (4, 5) or prefix.shape[-4:-2] != (depth, 2)
                             or prefix.shape[-1] != d):
    raise ValueError(f"{config.model_type}: a prefix entering at layer {entry_layer} must be "
                     f"[{depth}, 2, P, {d}] or with a leading example axis, got "
                     f"{prefix.shape}")
  if tokens is not None and tokens.shape[-2] == 0:
    tokens = None
  if deep is not None:
    deep = None if deep.shape[-2] == 0 else jnp.moveaxis(attention.per_example(deep, n, 3), 1, 0)
  if prefix is not None:
    prefix = None if prefix.shape[-2] == 0 else jnp.moveaxis(
        attention.per_example(prefix, n, 4), 1, 0)
  return tokens, deep, prefix


def _insert(h, tokens):
  n = h.shape[0]
  tokens = attention.per_example(tokens, n, 2).astype(h.dtype)
  return jnp.concatenate([h[:, :1], tokens, h[:, 1:]], axis=1)


def hidden_states(config: ViTConfig, params, images, prompt=None, *, entry_layer: int = 0,
                  lower_states=None, return_layers: bool = False):
  """The final-LayerNorm stream [n, 1 (+ P) + N, d] of NHWC images (or of `lower_states`,
  the stream entering `entry_layer`); with return_layers also the stream entering every
  layer and the last one's output, [L - k + 1, n, ..., d] (before the final LayerNorm)."""
  h = lower(config, params, images, entry_layer) if lower_states is None else lower_states
  n = h.shape[0]
  tokens, deep, prefix = _check_prompt(config, prompt, entry_layer, n)
  if tokens is not None:
    h = _insert(h, tokens)
  p = 0 if deep is None else deep.shape[2]
  if deep is not None:
    h = _insert(h, deep[0])

  def layer(h, xs):
    lp, ldeep, lpre = xs
    if ldeep is not None:  # VPT-deep: this layer's own tokens replace the prompt positions
      h = jnp.concatenate([h[:, :1], ldeep.astype(h.dtype), h[:, 1 + p:]], axis=1)
    out = _block(config, lp, h, lpre)
    return out, (h if return_layers else None)

  h, inputs = jax.lax.scan(layer, h, (_layers(params, entry_layer), deep, prefix))
  out = bert.layer_norm(h, params["ln"]["scale"], params["ln"]["bias"], config.layer_norm_eps)
  if return_layers:
    return out, jnp.concatenate([inputs, h[None]], axis=0)
  return out


def pooled(config: ViTConfig, params, h):
  """The pooled feature [n, d] of the final stream: the class token, through the ViT pooler
  (tanh dense) where the checkpoint has one."""
  cls = h[:, 0]
  return jnp.tanh(_dense(params["pooler"], cls)) if config.pooler else cls


def classify(config: ViTConfig, params, h):
  """Classifier logits [n, K] from the final stream (the class token, as
  ViTForImageClassification reads it)."""
  return _dense(params["classifier"], h[:, 0])

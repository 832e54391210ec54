"""A loaded vision backbone: features, logits, visual prompts, lower stages computed once.

`VisionModel` holds a family module (_efficientnet, _resnet, _vit), its config, weights and
preprocessing settings. Images are NHWC float32, already preprocessed (`preprocess`). A
prompt is a dict; which keys a family reads:
  pixels  [H, W, C] or [n, H, W, C]: added to the image (pad and full-image prompts, any family);
  film    [2, C] or [n, 2, C]: the map entering stage k becomes h * (1 + film[0]) + film[1]
          (CNNs; FiLM / CAVIA-style feature prompts after a named stage);
  tokens, deep, prefix: ViT and DINOv2 prompt tokens (VPT-shallow, VPT-deep, P-tuning v2),
          see _vit.py.
Prompts enter at `entry_layer` k (a CNN stage or a ViT layer); the stages or layers below k do
not depend on the prompt, so `lower_states` computes them once per image and the Net's
`prepare` passes them on. A pixel prompt changes the image itself, so it needs entry_layer 0.
"""

import functools
import json
import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtpjax.nn import _compose as nets
from mtpjax.pretrained import _efficientnet as efficientnet
from mtpjax.pretrained import _resnet as resnet
from mtpjax.pretrained import _vit as vit

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PROMPT_KEYS = {"cnn": ("pixels", "film"), "vit": ("pixels", "tokens", "deep", "prefix")}


def _kind(family) -> str:
  return "vit" if family is vit else "cnn"


def num_entries(family, config) -> int:
  """The entry points of a prompt: 0 .. L - 1 for a ViT, 0 .. stages for a CNN (at `stages`
  the prompt acts on the last map, before the head)."""
  return config.num_hidden_layers if family is vit else config.num_stages + 1


def check_entry_layer(family, config, entry_layer) -> int:
  top = num_entries(family, config)
  if isinstance(entry_layer, bool) or not isinstance(entry_layer, int) or not (
      0 <= entry_layer < top):
    raise ValueError(f"entry_layer must be an integer in [0, {top}) for this "
                     f"{'ViT' if family is vit else 'CNN'}, got {entry_layer!r}")
  return entry_layer


def lower(family, config, params, images, entry_layer: int):
  """The map (CNN) or token stream (ViT) entering `entry_layer`, from the image alone."""
  if family is vit:
    return vit.lower(config, params, images, entry_layer)
  h = family.stem(config, params, images)
  for s in range(entry_layer):
    h = family.stage(config, params, h, s)
  return h


def _split_prompt(family, prompt):
  prompt = dict(prompt or {})
  allowed = PROMPT_KEYS[_kind(family)]
  unknown = sorted(set(prompt) - set(allowed))
  if unknown:
    raise ValueError(f"a {'ViT' if family is vit else 'CNN'} prompt is a dict with keys among "
                     f"{list(allowed)}, got {unknown}")
  return prompt.pop("pixels", None), prompt


def forward(family, config, params, x, prompt=None, *, entry_layer: int = 0):
  """(pooled features [n, d], the final map or stream) of images x [n, H, W, C] (or of
  {"lower": states entering entry_layer}) under a prompt dict."""
  pixels, rest = _split_prompt(family, prompt)
  if isinstance(x, dict):
    if pixels is not None:
      raise ValueError("a pixel prompt changes the image, so the lower stages cannot be "
                       "precomputed: pass the images")
    h = x["lower"]
  else:
    if pixels is not None:
      if pixels.shape[-3:] != x.shape[-3:]:
        raise ValueError(f"a pixel prompt must be {tuple(x.shape[-3:])} (or with a leading "
                         f"example axis) for these images, got {tuple(pixels.shape)}")
      x = x + (pixels if pixels.ndim == 4 else pixels[None]).astype(x.dtype)
      if entry_layer:
        raise ValueError("a pixel prompt acts on the image: use entry_layer 0")
    h = None if family is vit else lower(family, config, params, x, entry_layer)
  if family is vit:
    out = vit.hidden_states(config, params, x if h is None else None, rest,
                            entry_layer=entry_layer, lower_states=h)
    return vit.pooled(config, params, out), out
  film = rest.get("film")
  if film is not None:
    c = h.shape[-1]
    if film.shape[-2:] != (2, c) or film.ndim not in (2, 3):
      raise ValueError(f"a FiLM prompt entering at stage {entry_layer} must be [2, {c}] "
                       f"(scale offset, shift) or [n, 2, {c}], got {tuple(film.shape)}")
    film = film.astype(h.dtype)
    if film.ndim == 3:
      film = film[:, :, None, None, :]
      h = h * (1 + film[:, 0]) + film[:, 1]
    else:
      h = h * (1 + film[0][None, None, None]) + film[1][None, None, None]
  for s in range(entry_layer, config.num_stages):
    h = family.stage(config, params, h, s)
  return family.head(config, params, h), h


def classify(family, config, params, pooled, final):
  if "classifier" not in params:
    raise ValueError("this checkpoint has no classifier: use features()")
  if family is vit:
    return vit.classify(config, params, final)
  return pooled @ params["classifier"]["kernel"] + params["classifier"]["bias"][None]


class VisionModel(NamedTuple):
  """A vision checkpoint: family module, config, weights, preprocessing settings."""

  family: Any
  config: Any
  params: Any
  preprocessing: dict           # input_size, mean, std, crop_pct, interpolation
  path: str

  @property
  def width(self) -> int:
    """The pooled feature width d."""
    return int(jax.eval_shape(self.features_fn(), self.params,
                              jnp.zeros((1, *self.input_size, self.channels))).shape[-1])

  @property
  def input_size(self):
    return tuple(self.preprocessing["input_size"])

  @property
  def channels(self) -> int:
    return self.config.num_channels

  def stage_channels(self, entry_layer: int) -> int:
    """The channels a FiLM prompt entering at `entry_layer` acts on (CNNs)."""
    check_entry_layer(self.family, self.config, entry_layer)
    if self.family is vit:
      return self.config.hidden_size
    return self.family.stage_channels(self.params, entry_layer)

  # --- numpy in, numpy out --------------------------------------------------------------------

  def features(self, images, *, prompt=None, entry_layer: int = 0):
    """Pooled pre-classifier features [n, d] float32 of preprocessed NHWC images."""
    return np.asarray(_compiled(self, "features", entry_layer)(self.params,
                                                              _images(self, images), prompt))

  def logits(self, images, *, prompt=None, entry_layer: int = 0):
    """Classifier logits [n, K] float32 (checkpoints with a classifier)."""
    if "classifier" not in self.params:
      raise ValueError(f"{self.path} has no classifier: use features()")
    return np.asarray(_compiled(self, "logits", entry_layer)(self.params,
                                                            _images(self, images), prompt))

  def lower_states(self, images, entry_layer: int, *, batch_size: int = 64):
    """The map (CNN [n, h, w, c]) or token stream (ViT [n, 1 + N, d]) entering
    `entry_layer`, float32 numpy, in batches: compute once, train a late prompt on it."""
    if check_entry_layer(self.family, self.config, entry_layer) == 0 and self.family is vit:
      raise ValueError("lower_states: entry_layer must be >= 1 for a ViT")
    images = _images(self, images)
    fn = _compiled(self, "lower", entry_layer)
    return np.concatenate([np.asarray(fn(self.params, images[i:i + batch_size], None))
                           for i in range(0, len(images), batch_size)])

  # --- pure functions --------------------------------------------------------------------------

  def features_fn(self, entry_layer: int = 0):
    """f(params, x, prompt=None) -> [n, d]; x: images or {"lower": lower_states}."""
    check_entry_layer(self.family, self.config, entry_layer)
    def f(params, x, prompt=None):
      return forward(self.family, self.config, params, x, prompt, entry_layer=entry_layer)[0]
    return f

  def logits_fn(self, entry_layer: int = 0):
    check_entry_layer(self.family, self.config, entry_layer)
    def f(params, x, prompt=None):
      pooled, final = forward(self.family, self.config, params, x, prompt,
                              entry_layer=entry_layer)
      return classify(self.family, self.config, params, pooled, final)
    return f

  def net(self, *, entry_layer: int = 0) -> nets.Net:
    """The backbone as a Net for mj.compose: apply(params, x, context) -> pooled features,
    context a prompt dict (mj.prompts' visual kinds, or token kinds on a ViT); prepare
    computes the stages below `entry_layer` once; embed is the prompt-free pooled feature
    (what generated and instance-level prompts read)."""
    f = self.features_fn(entry_layer)
    weights = self.params

    def init(key, x):
      return weights

    init.loaded = True

    def prepare(params, x):
      if entry_layer == 0 or isinstance(x, dict):
        return x
      return {"lower": lower(self.family, self.config, params, x, entry_layer)}

    def embed(params, x):
      return f(params, x, None)

    return nets.Net(init, f, self.width, embed, prepare)


def _images(model: VisionModel, images):
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] != model.channels:
    raise ValueError(f"images must be [n, H, W, {model.channels}] float32 NHWC, preprocessed "
                     f"(mj.pretrained.preprocess); got {images.shape}"
                     + (" (NCHW? transpose with .transpose(0, 2, 3, 1))"
                        if images.ndim == 4 and images.shape[1] == model.channels else ""))
  return images


def _compiled(model: VisionModel, what: str, entry_layer: int):
  return _jit(model.family.__name__, model.config, what,
              check_entry_layer(model.family, model.config, entry_layer))


@functools.lru_cache(maxsize=16)
def _jit(family_name, config, what, entry_layer):
  import importlib
  family = importlib.import_module(family_name)
  if what == "lower":
    return jax.jit(lambda params, x, _: lower(family, config, params, x, entry_layer))

  def fn(params, x, prompt):
    pooled, final = forward(family, config, params, x, prompt, entry_layer=entry_layer)
    return pooled if what == "features" else classify(family, config, params, pooled, final)
  return jax.jit(fn)


# --- Preprocessing ---------------------------------------------------------------------------

def preprocess(images, settings: dict, *, size: Optional[int] = None):
  """Checkpoint-ready images [n, S, S, C] float32 from images [n, H, W, C] (uint8 0..255, or
  floats in [0, 1]): the short side resized to S / crop_pct (bicubic, antialiased, JAX's
  resize: close to but not bit-equal with PIL's), the centre S x S crop, then (x - mean) / std,
  with S, crop_pct, mean and std from the checkpoint's settings (`model.preprocessing`)."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(f"preprocess: images must be [n, H, W, C], got {images.shape}")
  x = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
  channels = len(settings["mean"])
  if x.shape[-1] == 1 and channels == 3:
    x = np.repeat(x, 3, axis=-1)  # grey images tiled to RGB
  s = size or settings["input_size"][0]
  short = int(np.floor(s / settings.get("crop_pct", 1.0)))
  n, h, w, c = x.shape
  nh, nw = (short, max(short, round(w * short / h))) if h <= w else (
      max(short, round(h * short / w)), short)
  x = jax.image.resize(jnp.asarray(x), (n, nh, nw, c), "cubic", antialias=True)
  top, left = (nh - s) // 2, (nw - s) // 2
  x = x[:, top:top + s, left:left + s]
  mean = jnp.asarray(settings["mean"], jnp.float32)[None, None, None]
  std = jnp.asarray(settings["std"], jnp.float32)[None, None, None]
  return np.asarray((x - mean) / std, np.float32)


# --- Loading ------------------------------------------------------------------------------------

HF_VISION_TYPES = ("vit", "dinov2", "resnet")


def is_timm(raw: dict) -> bool:
  return "architecture" in raw and "model_type" not in raw


def _timm_family(arch: str):
  for prefix in ("tf_efficientnet_", "efficientnet_"):
    if arch.startswith(prefix):
      return efficientnet
  if arch.startswith("resnet") and arch[len("resnet"):].rstrip("d").isdigit():
    return resnet
  raise ValueError(f"load: timm architecture {arch!r} is not supported; supported: "
                   f"tf_efficientnet_*, efficientnet_*, resnet<depth>")


def load_vision(path: str, raw: dict, weights: dict, tensor_getter) -> VisionModel:
  """A VisionModel from a timm or transformers checkpoint directory (config.json read)."""
  if is_timm(raw):
    arch = raw["architecture"]
    family = _timm_family(arch)
    if family is efficientnet:
      config = efficientnet.EfficientNetConfig.from_timm(raw, weights)
    else:
      config = resnet.config_from_timm(raw, weights)
    get, check = tensor_getter(weights, path)
    params = (efficientnet.from_timm(config, weights, get) if family is efficientnet
              else resnet.from_weights(config, weights, get))
    cfg = raw.get("pretrained_cfg", {})
    settings = {"input_size": tuple(cfg.get("input_size", (3, 224, 224))[1:]),
                "mean": tuple(cfg.get("mean", IMAGENET_MEAN)),
                "std": tuple(cfg.get("std", IMAGENET_STD)),
                "crop_pct": cfg.get("crop_pct", 0.875),
                "interpolation": cfg.get("interpolation", "bicubic")}
  else:
    model_type = raw["model_type"]
    prefix = {"vit": "vit.", "dinov2": "dinov2.", "resnet": "resnet."}[model_type]
    weights = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in weights.items()}
    get, check = tensor_getter(weights, path)
    if model_type == "resnet":
      family, config = resnet, resnet.config_from_hf(raw, weights)
      params = resnet.from_weights(config, weights, get)
      size = raw.get("image_size", 224)
    else:
      family = vit
      labels = (weights["classifier.weight"].shape[0]
                if "classifier.weight" in weights and model_type == "vit" else 0)
      config = vit.ViTConfig.from_hf(raw, pooler="pooler.dense.weight" in weights,
                                     num_labels=labels)
      params = vit.from_hf(config, get)
      size = config.image_size
    pre = _read_preprocessor(path)
    settings = {"input_size": (size, size), "mean": tuple(pre.get("image_mean", IMAGENET_MEAN)),
                "std": tuple(pre.get("image_std", IMAGENET_STD)),
                "crop_pct": pre.get("crop_pct", 1.0), "interpolation": "bicubic"}
  check()
  return VisionModel(family, config, jax.tree.map(jnp.asarray, params), settings, path)


def _read_preprocessor(path: str) -> dict:
  f = os.path.join(path, "preprocessor_config.json")
  if not os.path.isfile(f):
    return {}
  with open(f) as fh:
    return json.load(fh)

"""Visual prompt kinds: pixel prompts for any backbone, FiLM feature prompts, VPT-deep tokens.

Each is a `Prompt` (init(key) -> (shared, task), apply(shared, task) -> the dict a
VisionModel's Net reads), so compose, every learner and prompt-only adaptation take them like
the text kinds. All start at zero (`init_scale=0`): the prompted backbone starts as the plain
one, and a prompt of size 0 computes exactly the plain backbone. ViT prompt tokens at the
input (VPT-shallow) are the text kinds' `static(P, d)` (and `generated`, `ensembled`, ...).
"""

import jax
import jax.numpy as jnp

from mtpjax.prompts._kinds import Prompt, _normal


def _check_size(what, **sizes):
  bad = {k: v for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
  if bad:
    raise ValueError(f"{what}: sizes must be non-negative integers, got {bad}")


def pad(height: int, width: int, border: int, *, channels: int = 3,
        init_scale: float = 0.0, shared: bool = False) -> Prompt:
  """A learned border of `border` pixels added to the image (Bahng et al. 2022's pad
  prompt): parameters {"top", "bottom": [border, width, C], "left", "right": [height - 2
  border, border, C]}, 2 border (height + width - 2 border) C values; the inside is never
  touched. shared=True: one prompt for all tasks (role "prompt_shared")."""
  _check_size("pad prompt", height=height, width=width, border=border, channels=channels)
  if 2 * border > min(height, width):
    raise ValueError(f"pad prompt: a border of {border} does not fit a {height}x{width} image")
  inner = height - 2 * border

  def init(key):
    keys = iter(jax.random.split(key, 4))
    p = {"top": _normal(next(keys), (border, width, channels), init_scale),
         "bottom": _normal(next(keys), (border, width, channels), init_scale),
         "left": _normal(next(keys), (inner, border, channels), init_scale),
         "right": _normal(next(keys), (inner, border, channels), init_scale)}
    return (p, None) if shared else (None, p)

  def apply(shared_p, task, **_):
    if border == 0:
      return {}
    p = shared_p if shared else task
    lead = p["top"].shape[:-3]
    middle = jnp.zeros(lead + (inner, width - 2 * border, channels), p["top"].dtype)
    rows = jnp.concatenate([p["left"], middle, p["right"]], axis=-2)
    return {"pixels": jnp.concatenate([p["top"], rows, p["bottom"]], axis=-3)}

  return Prompt(init, apply)


def _one_array(name: str, shape, init_scale: float, shared: bool) -> Prompt:
  """A prompt that is one learned array, given to the backbone as {name: array}."""
  def init(key):
    p = _normal(key, shape, init_scale)
    return (p, None) if shared else (None, p)

  def apply(shared_p, task, **_):
    return {name: shared_p if shared else task}

  return Prompt(init, apply)


def pixels(height: int, width: int, *, channels: int = 3, init_scale: float = 0.0,
           shared: bool = False) -> Prompt:
  """A learned full-image perturbation [height, width, C] added to the image."""
  _check_size("pixel prompt", height=height, width=width, channels=channels)
  return _one_array("pixels", (height, width, channels), init_scale, shared)


def film(channels: int, *, init_scale: float = 0.0, shared: bool = False) -> Prompt:
  """A feature prompt [2, C] on a CNN's map entering the entry stage: h * (1 + scale) +
  shift (FiLM; CAVIA's context on a pretrained backbone). channels: what the model's
  stage_channels(entry_layer) says."""
  _check_size("FiLM prompt", channels=channels)
  return _one_array("film", (2, channels), init_scale, shared)


def vpt_deep(length: int, width: int, layers: int, *, init_scale: float = 0.02,
             shared: bool = False) -> Prompt:
  """VPT-deep (Jia et al. 2022): fresh prompt tokens [layers, length, width] in every ViT
  layer from the entry layer on, each layer's replacing what the layer below left there."""
  _check_size("VPT-deep prompt", length=length, width=width, layers=layers)
  return _one_array("deep", (layers, length, width), init_scale, shared)

"""EfficientNet (timm's `tf_efficientnet_*` and `efficientnet_*`) as a key map and blocks.

A stem (3x3 stride-2 conv, batch norm, activation), seven stages of blocks (`blocks.S.B`):
stage 0 depthwise-separable (conv_dw, bn1, act, [squeeze-excite], conv_pw, bn2), the others
inverted residuals (conv_pw expand, bn1, act, conv_dw, bn2, act, [squeeze-excite], conv_pwl,
bn3), a residual where the stride is 1 and the width is kept; then conv_head, bn2, act, the
global mean and the classifier. Kernel sizes, widths and squeeze-excite come from the
weights; the stage strides are EfficientNet's (1, 2, 2, 2, 1, 2, 1, first block of each).
`tf_` variants pad as TensorFlow's "SAME" (timm's dynamic padding: the smaller half first)
with batch-norm eps 1e-3; the others pad symmetrically with eps 1e-5. Lite variants use
ReLU6 and no squeeze-excite; the B variants SiLU.

Parameters: {"stem": {"kernel", "bn"}, "stages": [[block, ...] x 7], "head": {"kernel", "bn"},
"classifier": {"kernel": [d, K], "bias"}}; a block is {"dw": {"kernel", "bn"}, "pw" / "pwl":
{"kernel", "bn"}, "se": {"reduce", "expand": {"kernel", "bias"}}} (as the block has them).
"""

import dataclasses
import re
from typing import Tuple

import jax
import jax.numpy as jnp

from mtpjax.pretrained import _cnn as cnn

STRIDES = (1, 2, 2, 2, 1, 2, 1)
ACTIVATIONS = {"relu6": jax.nn.relu6, "silu": jax.nn.silu}


@dataclasses.dataclass(frozen=True)
class EfficientNetConfig:
  architecture: str
  depths: Tuple[int, ...]          # blocks per stage
  tf_padding: bool
  activation: str
  num_labels: int
  num_channels: int = 3

  @property
  def eps(self) -> float:
    return 1e-3 if self.tf_padding else 1e-5

  @property
  def num_stages(self) -> int:
    return len(self.depths)

  @classmethod
  def from_timm(cls, raw: dict, weights: dict) -> "EfficientNetConfig":
    arch = raw["architecture"]
    depths = []
    for s in range(len(STRIDES)):
      blocks = {int(m.group(1)) for k in weights
                for m in [re.match(rf"blocks\.{s}\.(\d+)\.", k)] if m}
      if not blocks:
        break
      depths.append(max(blocks) + 1)
    if len(depths) != len(STRIDES):
      raise ValueError(f"load: {arch}: expected {len(STRIDES)} stages of blocks "
                       f"(blocks.0 .. blocks.{len(STRIDES) - 1}), found {len(depths)}")
    num_labels = weights["classifier.weight"].shape[0] if "classifier.weight" in weights else 0
    return cls(arch, tuple(depths), arch.startswith("tf_"),
               "relu6" if "lite" in arch else "silu", num_labels,
               int(raw.get("model_args", {}).get("in_chans", 3)))


def from_timm(config: EfficientNetConfig, weights: dict, get) -> dict:
  """The pytree from timm's tensor names; get(name, shape) reads one tensor."""
  def shape(name):
    if name not in weights:
      raise ValueError(f"load: {config.architecture}: missing tensor {name!r}")
    return weights[name].shape

  def conv_bn(conv_name, bn_name):
    o, i, kh, kw = shape(conv_name + ".weight")
    return {"kernel": cnn.conv_kernel(get(conv_name + ".weight", (o, i, kh, kw))),
            "bn": cnn.read_bn(get, bn_name, o)}

  def se(pre):
    if pre + "se.conv_reduce.weight" not in weights:
      return None
    out = {}
    for part in ("reduce", "expand"):
      name = pre + f"se.conv_{part}"
      o = shape(name + ".weight")
      out[part] = {"kernel": cnn.conv_kernel(get(name + ".weight", o)),
                   "bias": get(name + ".bias", (o[0],))}
    return out

  stages = []
  for s, depth in enumerate(config.depths):
    blocks = []
    for b in range(depth):
      pre = f"blocks.{s}.{b}."
      if s == 0:
        block = {"dw": conv_bn(pre + "conv_dw", pre + "bn1"),
                 "pw": conv_bn(pre + "conv_pw", pre + "bn2")}
      else:
        block = {"pw": conv_bn(pre + "conv_pw", pre + "bn1"),
                 "dw": conv_bn(pre + "conv_dw", pre + "bn2"),
                 "pwl": conv_bn(pre + "conv_pwl", pre + "bn3")}
      excite = se(pre)
      if excite is not None:
        block["se"] = excite
      blocks.append(block)
    stages.append(blocks)
  params = {"stem": conv_bn("conv_stem", "bn1"), "stages": stages,
            "head": conv_bn("conv_head", "bn2")}
  if config.num_labels:
    d = params["head"]["kernel"].shape[-1]
    params["classifier"] = {"kernel": get("classifier.weight", (config.num_labels, d)).T,
                            "bias": get("classifier.bias", (config.num_labels,))}
  return params


def _pad(config, kernel, stride):
  if config.tf_padding:
    return "SAME"
  return ((stride - 1) + (kernel.shape[0] - 1)) // 2  # timm's get_padding


def _conv_bn(config, p, x, stride=1, act=True, depthwise=False):
  f = cnn.depthwise if depthwise else cnn.conv
  x = f(x, p["kernel"], stride, _pad(config, p["kernel"], stride))
  x = cnn.batch_norm(x, p["bn"], config.eps)
  return ACTIVATIONS[config.activation](x) if act else x


def _excite(config, p, x):
  s = jnp.mean(x, axis=(1, 2), keepdims=True)
  s = cnn.conv(s, p["reduce"]["kernel"], 1, 0)
  s = s + cnn.channels(p["reduce"]["bias"], s)
  s = cnn.conv(ACTIVATIONS[config.activation](s), p["expand"]["kernel"], 1, 0)
  return x * jax.nn.sigmoid(s + cnn.channels(p["expand"]["bias"], s))


def _block(config, p, x, stride, first_stage):
  inp = x
  if first_stage:
    x = _conv_bn(config, p["dw"], x, stride, depthwise=True)
    if "se" in p:
      x = _excite(config, p["se"], x)
    x = _conv_bn(config, p["pw"], x, act=False)
  else:
    x = _conv_bn(config, p["pw"], x)
    x = _conv_bn(config, p["dw"], x, stride, depthwise=True)
    if "se" in p:
      x = _excite(config, p["se"], x)
    x = _conv_bn(config, p["pwl"], x, act=False)
  if stride == 1 and inp.shape[-1] == x.shape[-1]:
    x = x + inp
  return x


def stem(config, params, images):
  cnn.check_images(config.architecture, images, config.num_channels)
  return _conv_bn(config, params["stem"], images, 2)


def stage(config, params, x, s: int):
  for b, p in enumerate(params["stages"][s]):
    x = _block(config, p, x, STRIDES[s] if b == 0 else 1, s == 0)
  return x


def head(config, params, x):
  """The pooled feature [n, d]: conv_head, bn2, activation, global mean."""
  return cnn.global_mean(_conv_bn(config, params["head"], x))


def stage_channels(params, s: int) -> int:
  """The channels of the map entering stage s (s = num_stages: the last stage's output)."""
  if s == 0:
    return params["stem"]["kernel"].shape[-1]
  last = params["stages"][s - 1][-1]
  return last["pwl" if "pwl" in last else "pw"]["kernel"].shape[-1]

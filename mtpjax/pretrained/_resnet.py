"""ResNet (transformers' `resnet` and timm's `resnet*`) as key maps and one computation.

A stem (7x7 stride-2 conv, batch norm, ReLU, 3x3 stride-2 max pool), four stages of basic
(two 3x3 convs) or bottleneck (1x1, 3x3, 1x1) blocks with a projection shortcut (1x1 conv and
batch norm) where the shape changes, the global mean, a linear classifier. PyTorch's
symmetric padding (k // 2), batch-norm eps 1e-5. Widths and kernels come from the weights;
the strides from the config (transformers: `downsample_in_first_stage`,
`downsample_in_bottleneck`; timm: stride 2 in the 3x3 of the first block of stages 2-4).

Parameters: {"stem": {"kernel", "bn"}, "stages": [[block, ...] x 4], "classifier"}; a block
is {"convs": [{"kernel", "bn"}, ...], "shortcut": {"kernel", "bn"} (where it has one)}.
"""

import dataclasses
import re
from typing import Tuple

import jax

from mtpjax.pretrained import _cnn as cnn

EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  source: str                   # "transformers" or "timm"
  depths: Tuple[int, ...]
  bottleneck: bool
  first_stride: int             # stage 1's stride (2 with downsample_in_first_stage)
  stride_in_first_conv: bool    # a bottleneck's stride in its 1x1 (downsample_in_bottleneck)
  num_labels: int
  num_channels: int = 3
  architecture: str = "resnet"

  @property
  def num_stages(self) -> int:
    return len(self.depths)

  @property
  def strides(self) -> Tuple[int, ...]:
    return (self.first_stride,) + (2,) * (len(self.depths) - 1)


def _count(weights, pattern):
  found = {int(m.group(1)) for k in weights for m in [re.match(pattern, k)] if m}
  return max(found) + 1 if found else 0


def config_from_hf(raw: dict, weights: dict) -> ResNetConfig:
  if raw.get("layer_type", "bottleneck") not in ("basic", "bottleneck"):
    raise ValueError(f"load: resnet layer_type {raw.get('layer_type')!r} is not supported")
  if raw.get("hidden_act", "relu") != "relu":
    raise ValueError(f"load: resnet hidden_act {raw.get('hidden_act')!r} is not supported")
  labels = weights["classifier.1.weight"].shape[0] if "classifier.1.weight" in weights else 0
  return ResNetConfig("transformers", tuple(raw["depths"]), raw.get("layer_type") == "bottleneck",
                      2 if raw.get("downsample_in_first_stage", False) else 1,
                      bool(raw.get("downsample_in_bottleneck", False)), labels,
                      raw.get("num_channels", 3), "resnet")


def config_from_timm(raw: dict, weights: dict) -> ResNetConfig:
  depths = tuple(_count(weights, rf"layer{s}\.(\d+)\.") for s in range(1, 5))
  if not all(depths):
    raise ValueError(f"load: {raw['architecture']}: expected layer1 .. layer4 in the weights")
  labels = weights["fc.weight"].shape[0] if "fc.weight" in weights else 0
  return ResNetConfig("timm", depths, "layer1.0.conv3.weight" in weights, 1, False, labels,
                      int(raw.get("model_args", {}).get("in_chans", 3)), raw["architecture"])


def from_weights(config: ResNetConfig, weights: dict, get) -> dict:
  """The pytree from either checkpoint's tensor names; get(name, shape) reads one tensor."""
  def conv_bn(conv_name, bn_name):
    if conv_name + ".weight" not in weights:
      raise ValueError(f"load: {config.architecture}: missing tensor {conv_name + '.weight'!r}")
    o, i, kh, kw = weights[conv_name + ".weight"].shape
    return {"kernel": cnn.conv_kernel(get(conv_name + ".weight", (o, i, kh, kw))),
            "bn": cnn.read_bn(get, bn_name, o)}

  convs = 3 if config.bottleneck else 2
  stages = []
  for s, depth in enumerate(config.depths):
    blocks = []
    for b in range(depth):
      if config.source == "transformers":
        pre = f"encoder.stages.{s}.layers.{b}."
        block = {"convs": [conv_bn(pre + f"layer.{j}.convolution", pre + f"layer.{j}.normalization")
                           for j in range(convs)]}
        if pre + "shortcut.convolution.weight" in weights:
          block["shortcut"] = conv_bn(pre + "shortcut.convolution", pre + "shortcut.normalization")
      else:
        pre = f"layer{s + 1}.{b}."
        block = {"convs": [conv_bn(pre + f"conv{j + 1}", pre + f"bn{j + 1}") for j in range(convs)]}
        if pre + "downsample.0.weight" in weights:
          block["shortcut"] = conv_bn(pre + "downsample.0", pre + "downsample.1")
      blocks.append(block)
    stages.append(blocks)
  if config.source == "transformers":
    params = {"stem": conv_bn("embedder.embedder.convolution", "embedder.embedder.normalization")}
    fc = "classifier.1"
  else:
    params = {"stem": conv_bn("conv1", "bn1")}
    fc = "fc"
  params["stages"] = stages
  if config.num_labels:
    d = stages[-1][-1]["convs"][-1]["kernel"].shape[-1]
    params["classifier"] = {"kernel": get(fc + ".weight", (config.num_labels, d)).T,
                            "bias": get(fc + ".bias", (config.num_labels,))}
  return params


def _conv_bn(p, x, stride=1, act=True):
  x = cnn.conv(x, p["kernel"], stride, p["kernel"].shape[0] // 2)
  x = cnn.batch_norm(x, p["bn"], EPS)
  return jax.nn.relu(x) if act else x


def _block(config, p, x, stride):
  convs = p["convs"]
  if config.bottleneck:
    s1, s2 = (stride, 1) if config.stride_in_first_conv else (1, stride)
    y = _conv_bn(convs[0], x, s1)
    y = _conv_bn(convs[1], y, s2)
    y = _conv_bn(convs[2], y, act=False)
  else:
    y = _conv_bn(convs[1], _conv_bn(convs[0], x, stride), act=False)
  short = _conv_bn(p["shortcut"], x, stride, act=False) if "shortcut" in p else x
  return jax.nn.relu(y + short)


def stem(config, params, images):
  cnn.check_images(config.architecture, images, config.num_channels)
  return cnn.max_pool(_conv_bn(params["stem"], images, 2))


def stage(config, params, x, s: int):
  for b, p in enumerate(params["stages"][s]):
    x = _block(config, p, x, config.strides[s] if b == 0 else 1)
  return x


def head(config, params, x):
  """The pooled feature [n, C]: the global mean of the last map."""
  return cnn.global_mean(x)


def stage_channels(params, s: int) -> int:
  if s == 0:
    return params["stem"]["kernel"].shape[-1]
  return params["stages"][s - 1][-1]["convs"][-1]["kernel"].shape[-1]


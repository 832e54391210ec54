"""What the convolutional families share: NHWC convolutions, inference-mode batch norm, pools.

Kernels are HWIO ([kh, kw, in, out]; depthwise [kh, kw, 1, C]); a batch norm is kept as its
four running tensors and applied as PyTorch's eval mode computes it, (x - mean) /
sqrt(var + eps) * weight + bias, so a port matches to float32 rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """A PyTorch OIHW kernel as HWIO (depthwise [C, 1, kh, kw] becomes [kh, kw, 1, C])."""
  return np.ascontiguousarray(np.asarray(w).transpose(2, 3, 1, 0))


def conv(x, kernel, stride: int = 1, padding="SAME", groups: int = 1):
  """NHWC convolution; padding "SAME" is TF's (the smaller half first), an int pads
  symmetrically as PyTorch's Conv2d(padding=p)."""
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (stride, stride), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def depthwise(x, kernel, stride: int = 1, padding="SAME"):
  return conv(x, kernel, stride, padding, groups=x.shape[-1])


def channels(v, x):
  """A per-channel vector [C] shaped to broadcast against x [..., C]."""
  return v.reshape((1,) * (x.ndim - 1) + (-1,)).astype(x.dtype)


def batch_norm(x, bn, eps: float):
  """Inference-mode batch norm from {"mean", "var", "scale", "bias": [C]}."""
  c = lambda name: channels(bn[name], x)
  return (x - c("mean")) / jnp.sqrt(c("var") + eps) * c("scale") + c("bias")


def read_bn(get, name: str, channels: int) -> dict:
  return {"scale": get(name + ".weight", (channels,)), "bias": get(name + ".bias", (channels,)),
          "mean": get(name + ".running_mean", (channels,)),
          "var": get(name + ".running_var", (channels,))}


def max_pool(x, window: int = 3, stride: int = 2, padding: int = 1):
  """PyTorch's MaxPool2d (padding with -inf)."""
  pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), pads)


def global_mean(x):
  """[n, H, W, C] -> [n, C]."""
  return jnp.mean(x, axis=(1, 2))


def check_images(name: str, images, channels: int) -> None:
  if images.ndim != 4 or images.shape[-1] != channels:
    raise ValueError(f"{name}: images must be [n, H, W, {channels}] (NHWC, preprocessed), "
                     f"got {tuple(images.shape)}")

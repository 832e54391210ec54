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
  if kernel.shape[:2] == (1, 1) and groups == 1 and padding in ("SAME", 0):
    # A 1x1 convolution is a matmul over channels (2x faster than a convolution on the CPU).
    return x[:, ::stride, ::stride] @ kernel[0, 0].astype(x.dtype)
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (stride, stride), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def _pads(size: int, k: int, stride: int, padding):
  if isinstance(padding, int):
    return padding, padding
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return total // 2, total - total // 2


def depthwise(x, kernel, stride: int = 1, padding="SAME"):
  """A depthwise convolution (kernel [kh, kw, 1, C]). On the CPU it is the sum of kh kw
  shifted windows of the padded input times the per-channel taps: XLA's CPU backend runs a
  grouped convolution about 10x slower than that (forward and gradient; 64 x 112 x 112 x 96,
  3x3). A stride s reads each window from one of the s x s phases of the input (a reshape),
  not through a strided slice, whose gradient is several times slower. Elsewhere it is the
  grouped convolution."""
  if jax.default_backend() != "cpu":
    return conv(x, kernel, stride, padding, groups=x.shape[-1])
  kh, kw = kernel.shape[:2]
  n, h, w, c = x.shape
  ph, pw = _pads(h, kh, stride, padding), _pads(w, kw, stride, padding)
  oh, ow = (h + sum(ph) - kh) // stride + 1, (w + sum(pw) - kw) // stride + 1
  # Pad the end up to a multiple of the stride (those zeros are never read) and split the
  # rows and columns into phases: xr[:, a, p, b, q] is xp[:, a s + p, b s + q].
  hp = -(-(h + sum(ph)) // stride) * stride
  wp = -(-(w + sum(pw)) // stride) * stride
  xp = jnp.pad(x, ((0, 0), (ph[0], hp - h - ph[0]), (pw[0], wp - w - pw[0]), (0, 0)))
  xr = xp.reshape(n, hp // stride, stride, wp // stride, stride, c)
  taps = kernel.astype(x.dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      window = xr[:, i // stride:i // stride + oh, i % stride, j // stride:j // stride + ow,
                  j % stride]
      term = window * taps[i, j, 0][None, None, None]
      out = term if out is None else out + term
  return out


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

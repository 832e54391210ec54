"""Conv4, the few-shot image backbone, and the convolution, pooling and normalisation kernels
it is built from (each with a CPU-friendly implementation chosen by `auto_conv_impl`)."""


import flax.linen as nn
import jax
import jax.numpy as jnp

from mtpjax._src import types
from mtpjax.nn._compose import Net


NORMS = ("group", "layer", "none", "batch_transductive")
CONV_IMPLS = ("auto", "xla", "im2col", "taps")


def auto_conv_impl(backend: str) -> str:
  """What conv3x3's impl="auto" computes with on `backend` (a jax.default_backend() name).

  "im2col" where it was measured faster: the CPU and an NVIDIA H100 (benchmarks/omniglot_speed_notes.md; AMD
  GPUs also report "gpu" and are not measured). "xla" on the rest, e.g. TPUs, not measured.
  """
  return "im2col" if backend in ("cpu", "gpu", "cuda") else "xla"


def conv3x3(x: types.Array, kernel: types.Array, impl: str = "auto") -> types.Array:
  """3x3 'SAME' convolution, stride 1: x [n, H, W, C], kernel [3, 3, C, O] -> [n, H, W, O].

  impl:
    "xla"     lax.conv_general_dilated.
    "im2col"  the 9 shifted views of x concatenated on the channel axis [n, H, W, 9C], times
              the kernel as a [9C, O] matrix: only pads, slices and one matmul.
    "taps"    the sum over the 9 taps of a shifted view times a [C, O] matrix (no [9C]
              buffer, nine small matmuls).
    "auto"    auto_conv_impl(jax.default_backend()): "im2col" on CPUs and GPUs, else "xla".
  Why: under jax.vmap with per-task kernels (MAML's adapted weights) "xla" becomes a grouped
  convolution (feature_group_count = tasks) and its gradients convolutions with
  batch_group_count. On Omniglot MAML's meta-step XLA runs those ~18x slower than "im2col" on
  the CPU and 4.8x slower on an H100 (10.0 against 2.1 ms); "im2col" and "taps" stay batched
  matmuls. benchmarks/omniglot_speed_notes.md has the figures, CPU and GPU.
  """
  if impl == "auto":
    impl = auto_conv_impl(jax.default_backend())
  if impl == "xla":
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if impl not in ("im2col", "taps"):
    raise ValueError(f"conv3x3: impl must be one of {CONV_IMPLS}, got {impl!r}")
  h, w = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  views = [xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]
  if impl == "im2col":  # channel index of the patch: (3 * i + j) * C + c, as kernel.reshape
    patches = jnp.concatenate(views, axis=-1)
    return jnp.einsum("nhwk,ko->nhwo", patches, kernel.reshape(-1, kernel.shape[-1]))
  taps = kernel.reshape((9,) + kernel.shape[2:])
  out = jnp.einsum("nhwc,co->nhwo", views[0], taps[0])
  for view, tap in zip(views[1:], taps[1:]):
    out = out + jnp.einsum("nhwc,co->nhwo", view, tap)
  return out


def max_pool_2x2(x: types.Array) -> types.Array:
  """2x2 max-pool, stride 2, 'VALID' (odd rows/columns dropped): same values as nn.max_pool.

  Written as three selects between strided slices, so the gradient goes to exactly one element
  of each window, chosen by a comparison. Two other forms are worse here: XLA's reduce_window
  gradient (select-and-scatter) is slow on the CPU, and a reshape + jnp.max splits the gradient
  among ties by testing `x == max(x)`, which XLA may evaluate on recomputed, differently rounded
  values, so that no element matches and the gradient is 0/0 = NaN (seen under jit on
  GroupNorm'd blank image regions, where every element of a window ties).
  """
  h, w = x.shape[1:3]
  x = x[:, :h - h % 2, :w - w % 2, :]
  top = jnp.where(x[:, 0::2, 0::2] >= x[:, 0::2, 1::2], x[:, 0::2, 0::2], x[:, 0::2, 1::2])
  bottom = jnp.where(x[:, 1::2, 0::2] >= x[:, 1::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2])
  return jnp.where(top >= bottom, top, bottom)


def group_norm_coefficients(x: types.Array, scale: types.Array, bias: types.Array, groups: int,
                            eps: float = 1e-5) -> tuple[types.Array, types.Array]:
  """GroupNorm over [n, H, W, C] as a per-example, per-channel affine map: (mult, shift) [n, C].

  GroupNorm(x) = x * mult + shift. Same function as nn.GroupNorm (with this eps), computed
  for the CPU's sake:
  - statistics go through per-channel sums [n, C], so every full-size pass keeps the channels
    as the minor axis (nn.GroupNorm reshapes to [..., groups, C // groups]; a minor axis of 2
    made it ~2x slower forward and backward);
  - one pass for E[x] and E[x^2] together, var = max(E[x^2] - E[x]^2, 0) (nn.GroupNorm's
    default "fast variance" too), and the normalisation as one multiply-add per element:
    2x faster forward than centring first.
  benchmarks/omniglot_speed_notes.md has the measurements.
  """
  n, c = x.shape[0], x.shape[-1]

  def group_mean(per_channel):  # [n, C] -> [n, C], each channel gets its group's mean
    g = per_channel.reshape(n, groups, c // groups).mean(axis=-1)
    return jnp.repeat(g, c // groups, axis=-1)

  mean = group_mean(jnp.mean(x, axis=(1, 2)))
  var = jnp.maximum(group_mean(jnp.mean(x * x, axis=(1, 2))) - mean * mean, 0.0)
  mult = jax.lax.rsqrt(var + eps) * scale[None, :]                  # [n, C]
  shift = bias[None, :] - mean * mult                               # [n, C]
  return mult, shift


def affine_max_pool_2x2(x: types.Array, mult: types.Array, shift: types.Array) -> types.Array:
  """max_pool_2x2(x * mult + shift) for a per-example, per-channel affine map [n, C].

  An increasing map commutes with max and a decreasing one turns it into min, so this is
  max_pool_2x2(x * sign) * |mult| + shift: the map and its gradients run at the pooled
  resolution, a quarter of the elements. After a normalisation at the largest layer (Conv4's
  28x28) this made the block's gradient 2.6x and its second-order gradient 3.6x faster
  (benchmarks/omniglot_speed_notes.md). The same window element wins as in the
  unfused form wherever mult != 0, ties included (a whole channel is negated at once); at
  mult == 0 the map is flat and both pick a valid subgradient.
  """
  sign = jax.lax.stop_gradient(jnp.where(mult >= 0, 1.0, -1.0).astype(x.dtype))
  sign, mult, shift = (a[:, None, None, :] for a in (sign, mult, shift))
  return max_pool_2x2(x * sign) * (sign * mult) + shift


class _GroupNormCoefficients(nn.Module):
  """group_norm_coefficients with nn.GroupNorm's parameters (scale, bias), so checkpoints
  carry over."""

  groups: int

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    return group_norm_coefficients(x, scale, bias, self.groups)


class _LayerNormCoefficients(nn.Module):
  """nn.LayerNorm(reduction_axes=(-3, -2, -1)) over [n, H, W, C] (its parameters, eps and fast
  variance) as a per-example, per-channel affine map: (mult, shift) [n, C]."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = jnp.mean(x, axis=(1, 2, 3))[:, None]                     # [n, 1]
    var = jnp.maximum(jnp.mean(x * x, axis=(1, 2, 3))[:, None] - mean * mean, 0.0)
    mult = jax.lax.rsqrt(var + 1e-6) * scale[None, :]
    return mult, bias[None, :] - mean * mult


class _Conv3x3(nn.Module):
  """nn.Conv(features, (3, 3), padding="SAME") with a choice of implementation (same params)."""

  features: int
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = conv3x3(x, kernel, self.impl)
    return y + jnp.broadcast_to(bias, y.shape)


class _Conv4(nn.Module):
  """4 x [3x3 conv, normalisation, ReLU, 2x2 max-pool] (Vinyals et al.; MAML's Omniglot net).

  ReLU and max-pool commute, so the pool runs first (4x fewer ReLUs); the result is the same.
  Every normalisation here (and FiLM, at the context layer) is a per-example, per-channel
  affine map once its statistics are known, so it runs after the pool too
  (affine_max_pool_2x2), again the same function on a quarter of the elements.
  """

  filters: int
  norm: str
  groups: int
  context_mode: str
  context_layer: int
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, context=None):  # x: [n, H, W] or [n, H, W, C]
    if x.ndim == 3:
      x = x[..., None]
    for i in range(4):
      x = _Conv3x3(self.filters, self.conv_impl, name=f"conv_{i}")(x)
      film = context is not None and self.context_mode == "film" and i == self.context_layer
      if film:
        gamma, beta = jnp.split(nn.Dense(2 * self.filters, name="film")(context), 2, axis=-1)
      mult, shift = (None, None) if self.norm == "none" else self._norm_coefficients(i, x)
      if film:                      # FiLM is one more per-channel affine map: fold it in
        gamma, beta = (jnp.broadcast_to(a, (x.shape[0], self.filters)) for a in (gamma, beta))
        mult = 1.0 + gamma if mult is None else mult * (1.0 + gamma)
        shift = beta if shift is None else shift * (1.0 + gamma) + beta
      x = max_pool_2x2(x) if mult is None else affine_max_pool_2x2(x, mult, shift)
      x = nn.relu(x)
    return x.reshape(x.shape[0], -1)

  def _norm_coefficients(self, i, x):
    """Normalisation i as a per-example, per-channel affine map of x: (mult, shift) [n, C]."""
    if self.norm == "group":        # statistics per example: nothing leaks across examples
      return _GroupNormCoefficients(self.groups, name=f"norm_{i}")(x)
    if self.norm == "layer":
      return _LayerNormCoefficients(name=f"norm_{i}")(x)
    # "batch_transductive", MAML's mode: statistics of the batch in hand (support or query set
    # of one task), never running averages; examples of a set influence each other's features.
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.var(x, axis=(0, 1, 2))
    scale = self.param(f"norm_{i}_scale", nn.initializers.ones, (self.filters,))
    bias = self.param(f"norm_{i}_bias", nn.initializers.zeros, (self.filters,))
    mult = jax.lax.rsqrt(var + 1e-5) * scale
    shift = bias - mean * mult
    return (jnp.broadcast_to(mult, (x.shape[0], self.filters)),
            jnp.broadcast_to(shift, (x.shape[0], self.filters)))


def conv4(*, filters: int = 64, norm: str = "group", groups: int = 32, context_dim: int = 0,
          context_layer: int = 3, image_size: int = 28, conv_impl: str = "auto") -> Net:
  """The Conv4 backbone: 28x28 inputs give `filters` features (1x1 spatial after 4 pools).

  Args:
    norm: "group" (default: per-example statistics, so no leakage across tasks or examples),
      "layer", "none", or "batch_transductive" (MAML's choice: statistics of the batch in
      hand; state it when you report results).
    context_dim: a context vector (prompt) applied as FiLM after conv layer `context_layer`
      (CAVIA's classification set-up); 0 for none.
    conv_impl: how the 3x3 convolutions are computed (see conv3x3); "auto" picks per backend.
  """
  if norm not in NORMS:
    raise ValueError(f"conv4: norm must be one of {NORMS}, got {norm!r}")
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"conv4: conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
  if filters <= 0 or (norm == "group" and filters % groups):
    raise ValueError(f"conv4: filters ({filters}) must be positive and divisible by groups "
                     f"({groups}) for group norm")
  if not 0 <= context_layer < 4:
    raise ValueError(f"conv4: context_layer must be in [0, 4), got {context_layer}")
  mode = "film" if context_dim > 0 else "none"
  module = _Conv4(filters, norm, groups, mode, context_layer, conv_impl)
  side = image_size
  for _ in range(4):
    side //= 2
  out_dim = filters * side * side

  def init(key, x):
    context = jnp.zeros((context_dim,), jnp.float32) if mode == "film" else None
    return module.init(key, x, context)["params"]

  def apply(params, x, context=None):
    return module.apply({"params": params}, x, context if mode == "film" else None)

  return Net(init, apply, out_dim)



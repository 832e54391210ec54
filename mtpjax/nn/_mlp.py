"""The MLP backbone (CAVIA's context modes) and the linear task head."""

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mtpjax.nn._compose import CONTEXT_MODES, Net


class _MLP(nn.Module):
  """ReLU MLP conditioned on an optional context vector (CAVIA-style).

  concat: the context is concatenated to every input (CAVIA regression).
  add:    a learned projection of the context is added at hidden layer `context_layer`.
  film:   the context gives per-unit scale and shift at hidden layer `context_layer`
          (h * (1 + gamma) + beta), so a zero context is the identity.
  """

  features: Sequence[int]
  context_mode: str = "none"
  context_layer: int = 0
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x, context=None):  # x: [n, in_dim], context: [ctx_dim] or None
    use_context = self.context_mode != "none" and context is not None
    if use_context and self.context_mode == "concat":
      ctx = jnp.broadcast_to(context, x.shape[:-1] + context.shape[-1:])
      x = jnp.concatenate([x, ctx], axis=-1)
    for i, width in enumerate(self.features):
      x = nn.Dense(width, kernel_init=self.kernel_init, name=f"dense_{i}")(x)
      if use_context and i == self.context_layer:
        if self.context_mode == "add":
          proj = nn.Dense(width, use_bias=False, name="context_proj")(context)
          x = x + jnp.broadcast_to(proj, x.shape)
        elif self.context_mode == "film":
          gb = nn.Dense(2 * width, name="film")(context)
          gamma, beta = (jnp.broadcast_to(a, x.shape) for a in jnp.split(gb, 2, axis=-1))
          x = x * (1.0 + gamma) + beta
      x = nn.relu(x)
    return x


KERNEL_INITS = {
    "lecun": nn.initializers.lecun_normal(),
    # cbfinn/maml's fully connected layers: truncated normal, std 0.01.
    "maml": nn.initializers.truncated_normal(stddev=0.01),
}


def _kernel_init(name):
  if name not in KERNEL_INITS:
    raise ValueError(f"kernel_init must be one of {sorted(KERNEL_INITS)}, got {name!r}")
  return KERNEL_INITS[name]


def mlp(features: Sequence[int], *, context_dim: int = 0, context_mode: str = "concat",
        context_layer: int = 0, kernel_init: str = "lecun") -> Net:
  """A ReLU MLP backbone, optionally conditioned on a context vector.

  Args:
    features: hidden widths, e.g. (40, 40) for MAML's sinusoid network.
    context_dim: size of the context vector the prompt supplies; 0 for none.
    context_mode: "concat" (to the input), "add" or "film" (at hidden layer `context_layer`).
    context_layer: which hidden layer "add"/"film" act on.
    kernel_init: "lecun" (Flax's default) or "maml" (truncated normal, std 0.01).

  Returns:
    Net with init(key, x) and apply(params, x, context=None).

  >>> import jax
  >>> net = mlp((40, 40))
  >>> params = net.init(jax.random.key(0), jnp.zeros((5, 1)))
  >>> net.apply(params, jnp.zeros((5, 1))).shape
  (5, 40)
  """
  if not features or any(int(f) <= 0 for f in features):
    raise ValueError(f"mlp: features must be a non-empty list of positive widths, got {features!r}")
  if context_mode not in CONTEXT_MODES:
    raise ValueError(f"mlp: context_mode must be one of {CONTEXT_MODES}, got {context_mode!r}")
  if context_dim < 0:
    raise ValueError(f"mlp: context_dim must be >= 0, got {context_dim}")
  if not 0 <= context_layer < len(features):
    raise ValueError(f"mlp: context_layer must be in [0, {len(features)}), got {context_layer}")
  mode = context_mode if context_dim > 0 else "none"
  module = _MLP(tuple(int(f) for f in features), mode, context_layer, _kernel_init(kernel_init))

  def init(key, x):
    context = jnp.zeros((context_dim,), x.dtype) if mode != "none" else None
    return module.init(key, x, context)["params"]

  def apply(params, x, context=None):
    return module.apply({"params": params}, x, context)

  return Net(init, apply, int(features[-1]))


def linear_head(out_dim: int, *, kernel_init: str = "lecun") -> Net:
  """A linear task head: features [n, d] -> outputs [n, out_dim]."""
  if out_dim <= 0:
    raise ValueError(f"linear_head: out_dim must be positive, got {out_dim}")
  module = nn.Dense(out_dim, kernel_init=_kernel_init(kernel_init))

  def init(key, features):
    return module.init(key, features)["params"]

  def apply(params, features, context=None):
    del context
    return module.apply({"params": params}, features)

  return Net(init, apply, out_dim)



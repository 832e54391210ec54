"""Shared networks as (init, apply) pairs of pure functions over plain pytrees.

Layers are Flax Linen modules; the public surface is two functions:

  init(key, x) -> params            # x: one task's inputs, [n, ...]
  apply(params, x, context=None)    # -> features [n, width]

`context` is what a prompt composes into (for the MLP: a vector). Every backbone accepts
``context=None`` and then computes exactly the un-prompted function.
"""

from typing import Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtpjax._src import prompts
from mtpjax._src import types

CONTEXT_MODES = ("none", "concat", "add", "film")


class Net(NamedTuple):
  """A network as pure functions. `out_dim` is the feature width it returns; `embed`, when a
  backbone has one, maps inputs to a context-free representation [n, d] (prompts that
  condition on the instance use it)."""

  init: Callable[..., types.ArrayTree]
  apply: Callable[..., types.Array]
  out_dim: int
  embed: Optional[Callable[..., types.Array]] = None


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


NORMS = ("group", "layer", "none", "batch_transductive")


class _Conv4(nn.Module):
  """4 x [3x3 conv, normalisation, ReLU, 2x2 max-pool] (Vinyals et al.; MAML's Omniglot net)."""

  filters: int
  norm: str
  groups: int
  context_mode: str
  context_layer: int

  @nn.compact
  def __call__(self, x, context=None):  # x: [n, H, W] or [n, H, W, C]
    if x.ndim == 3:
      x = x[..., None]
    for i in range(4):
      x = nn.Conv(self.filters, (3, 3), padding="SAME", name=f"conv_{i}")(x)
      if self.norm == "group":      # statistics per example: nothing leaks across examples
        x = nn.GroupNorm(num_groups=self.groups, name=f"norm_{i}")(x)
      elif self.norm == "layer":
        x = nn.LayerNorm(reduction_axes=(-3, -2, -1), name=f"norm_{i}")(x)
      elif self.norm == "batch_transductive":
        # MAML's mode: statistics of the batch in hand (support or query set of one task),
        # never running averages; examples of a set influence each other's features.
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.var(x, axis=(0, 1, 2))
        x = (x - jnp.broadcast_to(mean, x.shape)) * jax.lax.rsqrt(
            jnp.broadcast_to(var, x.shape) + 1e-5)
        scale = self.param(f"norm_{i}_scale", nn.initializers.ones, (self.filters,))
        bias = self.param(f"norm_{i}_bias", nn.initializers.zeros, (self.filters,))
        x = x * jnp.broadcast_to(scale, x.shape) + jnp.broadcast_to(bias, x.shape)
      if context is not None and self.context_mode == "film" and i == self.context_layer:
        gb = nn.Dense(2 * self.filters, name="film")(context)
        gamma, beta = (jnp.broadcast_to(a, x.shape) for a in jnp.split(gb, 2, axis=-1))
        x = x * (1.0 + gamma) + beta
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="VALID")
    return x.reshape(x.shape[0], -1)


def conv4(*, filters: int = 64, norm: str = "group", groups: int = 32, context_dim: int = 0,
          context_layer: int = 3, image_size: int = 28) -> Net:
  """The Conv4 backbone: 28x28 inputs give `filters` features (1x1 spatial after 4 pools).

  Args:
    norm: "group" (default: per-example statistics, so no leakage across tasks or examples),
      "layer", "none", or "batch_transductive" (MAML's choice: statistics of the batch in
      hand; state it when you report results).
    context_dim: a context vector (prompt) applied as FiLM after conv layer `context_layer`
      (CAVIA's classification set-up); 0 for none.
  """
  if norm not in NORMS:
    raise ValueError(f"conv4: norm must be one of {NORMS}, got {norm!r}")
  if filters <= 0 or (norm == "group" and filters % groups):
    raise ValueError(f"conv4: filters ({filters}) must be positive and divisible by groups "
                     f"({groups}) for group norm")
  if not 0 <= context_layer < 4:
    raise ValueError(f"conv4: context_layer must be in [0, 4), got {context_layer}")
  mode = "film" if context_dim > 0 else "none"
  module = _Conv4(filters, norm, groups, mode, context_layer)
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


def identity(in_dim: int) -> Net:
  """A backbone with no parameters: heads on raw features (and a baseline for tests)."""
  return Net(lambda key, x: {}, lambda params, x, context=None: x, in_dim)


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


context_prompt = prompts.context  # a context vector (CAVIA) as a prompt

class Model(NamedTuple):
  """A model over a role-keyed params dict: {"shared", "head", optionally "prompt"}."""

  init: Callable[..., types.Params]
  apply: Callable[..., types.Array]


def compose(backbone: Net, head: Optional[Net] = None, prompt=None) -> Model:
  """Combine a backbone, a task head and a prompt into one model with role-keyed params.

  apply(params, x, task_repr=None) = head(params["head"], backbone(params["shared"], x, ctx))
  where ctx = prompt.apply(params["prompt_shared"], params["prompt"], ...) when the model has
  a prompt (see mtpjax.prompts).

  >>> model = compose(mlp((40, 40), context_dim=5), linear_head(1), context_prompt(5))
  >>> params = model.init(jax.random.key(0), jnp.zeros((10, 1)))
  >>> sorted(params)
  ['head', 'prompt', 'shared']
  """

  def init(key, x):
    k_shared, k_head, k_prompt = jax.random.split(key, 3)
    params = {types.SHARED: backbone.init(k_shared, x)}
    if head is not None:
      params[types.HEAD] = head.init(k_head, jnp.zeros(x.shape[:1] + (backbone.out_dim,)))
    if prompt is not None:
      shared_part, task_part = prompt.init(k_prompt)
      if task_part is not None:
        params[types.PROMPT] = task_part
      if shared_part is not None:
        params[types.PROMPT_SHARED] = shared_part
    return params

  # One compiled init instead of Flax running the forward pass eagerly, op by op (~10x
  # faster for the Transformer on the CPU).
  init = jax.jit(init)

  def apply(params, x, task_repr=None):
    context = None
    if prompt is not None:
      embed = None
      if backbone.embed is not None:
        embed = lambda inputs: backbone.embed(params[types.SHARED], inputs)
      context = prompt.apply(params.get(types.PROMPT_SHARED), params.get(types.PROMPT),
                             task_repr=task_repr, x=x, embed=embed)
    features = backbone.apply(params[types.SHARED], x, context)
    return head.apply(params[types.HEAD], features) if head is not None else features

  return Model(init, apply)

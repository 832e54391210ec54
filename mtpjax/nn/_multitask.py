"""Multi-task architectures as role-keyed models: hard parameter sharing and MMoE.

Both are `Model`s (init, apply) over {"shared", "head", optionally "prompt", "prompt_shared"},
for one task: the multi-task trainer gives "head" and "prompt" a leading task axis and hands
each task its own slice, so a per-task role is written once, as for one task.

  shared_bottom   x -> bottom(x; prompt context) -> tower_t -> y_t      (Caruana 1997)
  mmoe            x -> sum_e softmax(W_t x)_e expert_e(x; context) -> tower_t -> y_t
                  (Ma et al. 2018): the experts are shared, each task's gate W_t and tower
                  are its head, so tasks that conflict can use different experts.

A prompt (any kind whose output is a context vector, e.g. prompts.context, or composed
shared + task parts) conditions the bottom or every expert through the MLP's context modes.
"""

from typing import Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtpjax._src import types
from mtpjax.nn import _compose as nets
from mtpjax.nn._mlp import linear_head, mlp


def tower(features: Sequence[int], out_dim: int) -> nets.Net:
  """A task head: a ReLU MLP (possibly no hidden layer) then a linear output layer."""
  features = tuple(int(f) for f in features)
  if out_dim <= 0 or any(f <= 0 for f in features):
    raise ValueError(f"tower: widths and out_dim must be positive, got {features}, {out_dim}")
  hidden = mlp(features) if features else None
  out = linear_head(out_dim)

  def init(key, h):
    k1, k2 = jax.random.split(key)
    if hidden is None:
      return {"out": out.init(k2, h)}
    p_hidden = hidden.init(k1, h)
    return {"hidden": p_hidden, "out": out.init(k2, hidden.apply(p_hidden, h))}

  def apply(params, h, context=None):
    del context
    if hidden is not None:
      h = hidden.apply(params["hidden"], h)
    return out.apply(params["out"], h)

  return nets.Net(init, apply, out_dim)


def shared_bottom(bottom: Sequence[int], tower_features: Sequence[int], out_dim: int, *,
                  prompt=None, context_dim: int = 0, context_mode: str = "film") -> nets.Model:
  """Hard parameter sharing: a shared ReLU MLP bottom, a per-task tower as the head.

  With a prompt, its context vector (size context_dim) conditions the bottom's first hidden
  layer (context_mode "film", "add" or "concat"; see mtpjax.mlp).

  >>> model = shared_bottom((16,), (8,), 1)
  >>> params = model.init(jax.random.key(0), jnp.zeros((4, 10)))
  >>> model.apply(params, jnp.zeros((4, 10))).shape
  (4, 1)
  """
  if (prompt is None) != (context_dim == 0):
    raise ValueError("shared_bottom: a prompt needs its context_dim, and context_dim a prompt")
  backbone = mlp(bottom, context_dim=context_dim, context_mode=context_mode)
  return nets.compose(backbone, tower(tower_features, out_dim), prompt)


class MMoE(NamedTuple):
  """A Model (init, apply, prepare) plus gates(params, x) -> [n, num_experts]."""

  init: Callable[..., types.Params]
  apply: Callable[..., types.Array]
  prepare: Optional[Callable[..., types.ArrayTree]] = None
  gates: Optional[Callable[..., types.Array]] = None


class _Gate(nn.Module):
  num_experts: int

  @nn.compact
  def __call__(self, x):  # x: [n, d] -> [n, num_experts], rows on the simplex
    return jax.nn.softmax(nn.Dense(self.num_experts, name="gate")(x), axis=-1)


def mmoe(num_experts: int, expert_features: Sequence[int], tower_features: Sequence[int],
         out_dim: int, *, prompt=None, context_dim: int = 0,
         context_mode: str = "film") -> MMoE:
  """Multi-gate mixture of experts (Ma et al. 2018).

  params["shared"]: the experts' parameters, stacked along a leading [num_experts] axis (one
  vmap computes every expert); params["head"]: {"gate": the task's softmax gate over the
  experts, computed from the input, "tower": its tower}. The returned model's
  `gates(params, x)` is the task's gate, [n, num_experts].

  >>> model = mmoe(4, (16,), (8,), 1)
  >>> params = model.init(jax.random.key(0), jnp.zeros((4, 10)))
  >>> model.apply(params, jnp.zeros((4, 10))).shape
  (4, 1)
  """
  if num_experts < 1:
    raise ValueError(f"mmoe: num_experts must be >= 1, got {num_experts}")
  if (prompt is None) != (context_dim == 0):
    raise ValueError("mmoe: a prompt needs its context_dim, and context_dim a prompt")
  expert = mlp(expert_features, context_dim=context_dim, context_mode=context_mode)
  head_tower = tower(tower_features, out_dim)
  gate = _Gate(num_experts)

  def flat(x):
    return x.reshape(x.shape[0], -1)

  def init(key, x):
    k_exp, k_gate, k_tower, k_prompt = jax.random.split(key, 4)
    experts = jax.vmap(lambda k: expert.init(k, x))(jax.random.split(k_exp, num_experts))
    head = {"gate": gate.init(k_gate, flat(x))["params"],
            "tower": head_tower.init(k_tower, jnp.zeros((x.shape[0], expert.out_dim)))}
    params = {types.SHARED: experts, types.HEAD: head}
    if prompt is not None:
      params.update(nets.prompt_roles(prompt, k_prompt))
    return params

  def gates(params, x):
    return gate.apply({"params": params[types.HEAD]["gate"]}, flat(x))

  def apply(params, x, task_repr=None):
    context = None
    if prompt is not None:
      context = prompt.apply(params.get(types.PROMPT_SHARED), params.get(types.PROMPT),
                             task_repr=task_repr, x=x)
    outs = jax.vmap(lambda p: expert.apply(p, x, context))(params[types.SHARED])  # [E, n, d]
    mixed = jnp.einsum("ne,end->nd", gates(params, x), outs)
    return head_tower.apply(params[types.HEAD]["tower"], mixed)

  return MMoE(init, apply, None, gates)


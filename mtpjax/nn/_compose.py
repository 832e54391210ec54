"""Shared networks as (init, apply) pairs of pure functions over plain pytrees.

Layers are Flax Linen modules; the public surface is two functions:

  init(key, x) -> params            # x: one task's inputs, [n, ...]
  apply(params, x, context=None)    # -> features [n, width]

`context` is what a prompt composes into (for the MLP: a vector). Every backbone accepts
``context=None`` and then computes exactly the un-prompted function.
"""

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtpjax._src import types

CONTEXT_MODES = ("none", "concat", "add", "film")


class Net(NamedTuple):
  """A network as pure functions. `out_dim` is the feature width it returns; `embed`, when a
  backbone has one, maps inputs to a context-free representation [n, d] (prompts that
  condition on the instance use it); `prepare`, when it has one, maps inputs x to what
  apply(params, prepare(params, x), context) computes the same function from, doing once per
  example the work that no prompt can change (a late prompt's lower layers)."""

  init: Callable[..., types.ArrayTree]
  apply: Callable[..., types.Array]
  out_dim: int
  embed: Optional[Callable[..., types.Array]] = None
  prepare: Optional[Callable[..., types.ArrayTree]] = None


def identity(in_dim: int) -> Net:
  """A backbone with no parameters: heads on raw features (and a baseline for tests)."""
  return Net(lambda key, x: {}, lambda params, x, context=None: x, in_dim)


def prompt_roles(prompt, key) -> dict:
  """A prompt kind's initial parameters under their roles: {"prompt": task part,
  "prompt_shared": shared part}, each only when the kind has it."""
  shared_part, task_part = prompt.init(key)
  params = {}
  if task_part is not None:
    params[types.PROMPT] = task_part
  if shared_part is not None:
    params[types.PROMPT_SHARED] = shared_part
  return params


class Model(NamedTuple):
  """A model over a role-keyed params dict: {"shared", "head", optionally "prompt"}.

  prepare(params, x) -> x' does the per-example work that depends on the shared network only
  (identity for most backbones); apply(params, prepare(params, x)) == apply(params, x). Pass
  it to meta_learner(prepare=...) to do that work once per task instead of once per inner step.
  """

  init: Callable[..., types.Params]
  apply: Callable[..., types.Array]
  prepare: Optional[Callable[..., types.ArrayTree]] = None


def compose(backbone: Net, head: Optional[Net] = None, prompt=None) -> Model:
  """Combine a backbone, a task head and a prompt into one model with role-keyed params.

  apply(params, x, task_repr=None) = head(params["head"], backbone(params["shared"], x, ctx))
  where ctx = prompt.apply(params["prompt_shared"], params["prompt"], ...) when the model has
  a prompt (see mtpjax.prompts).

  >>> from mtpjax.nn import linear_head, mlp
  >>> from mtpjax.prompts import context
  >>> model = compose(mlp((40, 40), context_dim=5), linear_head(1), context(5))
  >>> params = model.init(jax.random.key(0), jnp.zeros((10, 1)))
  >>> sorted(params)
  ['head', 'prompt', 'shared']
  """

  def init_rest(key, n):
    _, k_head, k_prompt = jax.random.split(key, 3)
    params = {}
    if head is not None:
      params[types.HEAD] = head.init(k_head, jnp.zeros((n, backbone.out_dim)))
    if prompt is not None:
      params.update(prompt_roles(prompt, k_prompt))
    return params

  # Compiled inits instead of Flax running the forward pass eagerly, op by op (~10x faster for
  # the Transformer on the CPU). A pretrained backbone's init returns its loaded weights and
  # is not jitted here: XLA would copy 22M-parameter constants into the program.
  init_rest = jax.jit(init_rest, static_argnums=(1,))
  init_shared = backbone.init if getattr(backbone.init, "loaded", False) else jax.jit(backbone.init)

  def init(key, x):
    k_shared = jax.random.split(key, 3)[0]
    return {types.SHARED: init_shared(k_shared, x), **init_rest(key, x.shape[0])}

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

  prepare = None
  if backbone.prepare is not None:
    prepare = lambda params, x: backbone.prepare(params[types.SHARED], x)
  return Model(init, apply, prepare)

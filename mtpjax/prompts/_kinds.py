"""Prompt parameters of every kind, as (init, apply) pairs over plain pytrees.

A prompt kind splits its parameters by role:
  init(key) -> (shared, task)
    shared: parameters common to all tasks (role "prompt_shared"): a shared prompt, a
            generator, a prompt bank and its keys; None when the kind has none;
    task:   the per-task parameters (role "prompt"), which prompt-only adaptation adapts.
  apply(shared, task, *, task_repr=None, x=None, embed=None) -> context
    what the backbone consumes: for the Transformer, {"tokens": [P, d]} or
    {"prefix": [depth, 2, P, d]} (with a leading [n] axis when it depends on the instance);
    for the MLP, a context vector.

So "adaptive" prompts are not a kind of their own: any kind's task part adapts in the inner
loop (algorithm "cavia" or "prompt_maml", or fast=("prompt",)), and its initialisation is
meta-learned by MAML, first-order MAML, Reptile or Meta-SGD like any other role.
"""

from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from mtpjax._src import types

COMPOSE_MODES = ("add", "concat", "mpt")


class Prompt(NamedTuple):
  """A prompt kind: init(key) -> (shared part, task part) and apply(shared, task, ...) ->
  what the backbone consumes; `weights` gives an ensemble's mixing distribution."""

  init: Callable[[types.PRNGKey], tuple]
  apply: Callable[..., types.ArrayTree]
  weights: Optional[Callable[..., types.Array]] = None  # ensembles: the mixing distribution


def _shape(length, width, prefix_depth):
  if length < 0 or width <= 0 or prefix_depth < 0:
    raise ValueError(f"prompt: length must be >= 0, width > 0 and prefix_depth >= 0; got "
                     f"{length}, {width}, {prefix_depth}")
  return (prefix_depth, 2, length, width) if prefix_depth else (length, width)


def _wrap(arr, prefix_depth):
  return {"prefix": arr} if prefix_depth else {"tokens": arr}


def _normal(key, shape, scale):
  return scale * jax.random.normal(key, shape, jnp.float32)


def context(dim: int, *, init_scale: float = 0.0) -> Prompt:
  """A context vector for networks without tokens (CAVIA): task part [dim], zeros by default."""
  if dim <= 0:
    raise ValueError(f"context prompt: dim must be positive, got {dim}")

  def init(key):
    vec = jnp.zeros((dim,), jnp.float32) if init_scale == 0.0 else _normal(key, (dim,), init_scale)
    return None, vec

  def apply(shared, task, **_):
    return task

  return Prompt(init, apply)


def static(length: int, width: int, *, prefix_depth: int = 0, shared: bool = False,
           init_scale: float = 0.02) -> Prompt:
  """A learned prompt [length, width] (or a prefix [depth, 2, length, width]).

  shared=False: the prompt is the task part (adapted per task, its init meta-learned).
  shared=True: one prompt for all tasks (role "prompt_shared"), as in plain prompt tuning.
  """
  shape = _shape(length, width, prefix_depth)

  def init(key):
    p = _normal(key, shape, init_scale)
    return (p, None) if shared else (None, p)

  def apply(shared_p, task, **_):
    return _wrap(shared_p if shared else task, prefix_depth)

  return Prompt(init, apply)


def composed(length: int, width: int, *, mode: str = "add", task_length: Optional[int] = None,
             rank: int = 1, prefix_depth: int = 0, init_scale: float = 0.02) -> Prompt:
  """A shared prompt combined with a per-task prompt.

  add:    P = P_shared + P_task, P_task starting at zero;
  concat: P = [P_shared; P_task] along the length axis (task_length tokens for P_task);
  mpt:    P = P_shared * (U V), U [length, rank], V [rank, width] per task (multitask prompt
          tuning, Wang et al. 2023); U V starts as all ones, so P starts at P_shared.
  """
  if mode not in COMPOSE_MODES:
    raise ValueError(f"composed prompt: mode must be one of {COMPOSE_MODES}, got {mode!r}")
  if rank <= 0:
    raise ValueError(f"composed prompt: rank must be positive, got {rank}")
  shape = _shape(length, width, prefix_depth)

  def init(key):
    k_s, k_t = jax.random.split(key)
    p_shared = _normal(k_s, shape, init_scale)
    if mode == "add":
      task = jnp.zeros(shape, jnp.float32)
    elif mode == "concat":
      task = _normal(k_t, _shape(length if task_length is None else task_length, width,
                                 prefix_depth), init_scale)
    else:
      c = 1.0 / jnp.sqrt(jnp.float32(rank))
      task = {"u": jnp.full(shape[:-1] + (rank,), c), "v": jnp.full(shape[:-2] + (rank, width), c)}
    return p_shared, task

  def apply(shared_p, task, **_):
    if mode == "add":
      p = shared_p + task
    elif mode == "concat":
      p = jnp.concatenate([shared_p, task], axis=-2)
    else:
      p = shared_p * jnp.matmul(task["u"], task["v"])
    return _wrap(p, prefix_depth)

  return Prompt(init, apply)


def generated(length: int, width: int, *, repr_dim: int = 32, hidden: int = 128,
              prefix_depth: int = 0, init_scale: float = 0.02,
              repr_offset: bool = False) -> Prompt:
  """A generator network (role "prompt_shared") maps a task representation to the prompt.

  The representation is `task_repr` when given (e.g. support_summary(...) of the task's
  support set, [repr_dim]) and otherwise the learned task embedding, the task part [repr_dim],
  which the inner loop adapts from the support error.
  repr_offset: the task part is an offset added to `task_repr`, zero at the start, so an
  inner loop refines the prompt generated from the support set (without it the task part
  is unused whenever task_repr is given).
  """
  shape = _shape(length, width, prefix_depth)
  size = 1
  for s in shape:
    size *= s

  def init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    gen = {"w1": _normal(k1, (repr_dim, hidden), 1.0 / jnp.sqrt(repr_dim)),
           "b1": jnp.zeros((hidden,)),
           "w2": _normal(k2, (hidden, size), init_scale / jnp.sqrt(hidden)),
           "b2": _normal(k3, (size,), init_scale)}
    if repr_offset:
      return gen, jnp.zeros((repr_dim,), jnp.float32)
    return gen, _normal(jax.random.fold_in(key, 1), (repr_dim,), 1.0)

  def apply(gen, task, *, task_repr=None, **_):
    r = task if task_repr is None else task_repr                        # [repr_dim] or [n, repr_dim]
    if repr_offset and task_repr is not None:
      r = r + jnp.broadcast_to(task, r.shape)
    h = r @ gen["w1"]
    h = jnp.tanh(h + jnp.broadcast_to(gen["b1"], h.shape))
    p = h @ gen["w2"]
    p = p + jnp.broadcast_to(gen["b2"], p.shape)
    return _wrap(p.reshape(r.shape[:-1] + shape), prefix_depth)

  return Prompt(init, apply)


def mix(bank: types.Array, weights: types.Array) -> types.Array:
  """sum_k weights[..., k] * bank[k]: bank [K, ...], weights [..., K] -> [..., *bank.shape[1:]]."""
  return jnp.tensordot(weights, bank, axes=([-1], [0]))


def ensembled(num_prompts: int, length: int, width: int, *, key_dim: int = 32,
              temperature: float = 1.0, instance: bool = False, prefix_depth: int = 0,
              init_scale: float = 0.02) -> Prompt:
  """A bank of K prompts with keys; the prompt is an attention-weighted mix (ATTEMPT-style).

  The weights are softmax(keys . query / temperature) over the bank. The query is
  - per task (instance=False): the task part [key_dim], adapted per task;
  - per instance (instance=True, MetaPrompter-style): a learned projection of the instance's
    representation (`task_repr` [n, r] if given, else the backbone's embed(x)); the task part
    is then a per-task query offset [key_dim].
  Inspect the weights with ensemble_weights(...).
  """
  if num_prompts <= 0 or key_dim <= 0:
    raise ValueError(f"ensembled prompt: num_prompts and key_dim must be positive, got "
                     f"{num_prompts}, {key_dim}")
  if not temperature > 0:
    raise ValueError(f"ensembled prompt: temperature must be > 0, got {temperature}")
  shape = _shape(length, width, prefix_depth)

  def init(key):
    k_b, k_k, k_q, k_p = jax.random.split(key, 4)
    shared = {"bank": _normal(k_b, (num_prompts,) + shape, init_scale),
              "keys": _normal(k_k, (num_prompts, key_dim), 1.0)}
    if instance:
      shared["query_proj"] = _normal(k_p, (width, key_dim), 1.0 / jnp.sqrt(width))
      return shared, jnp.zeros((key_dim,))
    return shared, _normal(k_q, (key_dim,), 1.0)

  def weights(shared, task, *, task_repr=None, x=None, embed=None):
    if instance:
      if task_repr is None:
        if embed is None or x is None:
          raise ValueError("an instance-level ensemble needs task_repr or a backbone with embed")
        task_repr = embed(x)                                               # [n, width]
      query = task_repr @ shared["query_proj"]
      query = query + jnp.broadcast_to(task, query.shape)                 # [n, key_dim]
    else:
      query = task                                                         # [key_dim]
    return jax.nn.softmax(query @ shared["keys"].T / temperature, axis=-1)  # [..., K]

  def apply(shared, task, **kw):
    return _wrap(mix(shared["bank"], weights(shared, task, **kw)), prefix_depth)

  return Prompt(init, apply, weights)


def ensemble_weights(prompt: Prompt, shared, task, **kw) -> types.Array:
  """The mixing distribution over the bank of an ensembled prompt: [K] or [n, K]."""
  if prompt.weights is None:
    raise ValueError("ensemble_weights: this prompt was not made by ensembled()")
  return prompt.weights(shared, task, **kw)


# --- Initialisations -----------------------------------------------------------------------

def from_vocab(key: types.PRNGKey, embeddings: types.Array, length: int,
               *, skip_ids: int = 1) -> types.Array:
  """A [length, width] prompt of randomly drawn token embeddings (Lester et al. 2021).

  embeddings: the encoder's table [vocab, width]; ids below skip_ids (padding) are not drawn.
  """
  ids = jax.random.randint(key, (length,), skip_ids, embeddings.shape[0])
  return embeddings[ids]


def from_tokens(embeddings: types.Array, token_ids: Sequence[int]) -> types.Array:
  """A prompt made of the embeddings of given tokens, e.g. the class-label words."""
  ids = jnp.asarray(token_ids, jnp.int32)
  if ids.ndim != 1 or ids.size == 0:
    raise ValueError(f"from_tokens: token_ids must be a non-empty list, got {token_ids!r}")
  if int(ids.min()) < 0 or int(ids.max()) >= embeddings.shape[0]:
    raise ValueError(f"from_tokens: token ids must lie in [0, {embeddings.shape[0]})")
  return embeddings[ids]


def average(prompts: Sequence[types.ArrayTree]) -> types.ArrayTree:
  """The mean of several source prompts (same structure), an initialisation for a new task."""
  if not prompts:
    raise ValueError("average: no prompts given")
  return jax.tree.map(lambda *p: sum(p) / len(p), *prompts)


def support_summary(embed: Callable, params, support_x: types.Array) -> types.Array:
  """A task representation: the mean context-free embedding of the support set, [width]."""
  return jnp.mean(embed(params, support_x), axis=0)

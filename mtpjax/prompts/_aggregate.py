"""Aggregation: per-task prompts (tuned or adapted) merged into one shared initialisation.

Prompts come stacked, as the multi-task trainer holds them: a pytree whose leaves have a
leading task axis [T, ...].

  mean               the average (SPoT-style transfer, Vu et al. 2022)
  weighted_mean      weights proportional to each task's score (e.g. validation accuracy),
                     so better-tuned prompts count more
  mpt_decompose      multitask prompt tuning's form (Wang et al. 2023): P_t ~ P* o (U_t V_t),
                     a shared prompt times a per-task rank-r matrix, fitted to the prompts by
                     least squares; P* is the initialisation for a new task (with U V = 1, as
                     prompts.composed(mode="mpt") starts)
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtpjax._src import types


def _check_stacked(prompts, what):
  leaves = jax.tree.leaves(prompts)
  if not leaves:
    raise ValueError(f"{what}: no prompts given")
  t = {a.shape[0] if a.ndim else None for a in leaves}
  if len(t) != 1 or None in t:
    raise ValueError(f"{what}: every leaf needs the same leading task axis, got shapes "
                     f"{[a.shape for a in leaves][:3]}")
  return t.pop()


def mean(prompts: types.ArrayTree) -> types.ArrayTree:
  """The average over the leading task axis."""
  _check_stacked(prompts, "aggregate.mean")
  return jax.tree.map(lambda a: jnp.mean(a, axis=0), prompts)


def weighted_mean(prompts: types.ArrayTree, scores: types.Array) -> types.ArrayTree:
  """sum_t w_t P_t with w_t = score_t / sum(scores); scores >= 0, one per task."""
  t = _check_stacked(prompts, "aggregate.weighted_mean")
  scores = jnp.asarray(scores, jnp.float32)
  if scores.shape != (t,):
    raise ValueError(f"aggregate.weighted_mean: need one score per task ({t}), got shape "
                     f"{scores.shape}")
  if bool(jnp.any(scores < 0)) or not float(jnp.sum(scores)) > 0:
    raise ValueError(f"aggregate.weighted_mean: scores must be >= 0 and not all zero, got "
                     f"{scores.tolist()}")
  w = scores / jnp.sum(scores)
  return jax.tree.map(lambda a: jnp.tensordot(w.astype(a.dtype), a, axes=1), prompts)


class MPT(NamedTuple):
  """A multitask prompt decomposition: the shared prompt P* and per-task rank-r factors."""

  shared: types.Array   # P* [L, W]
  u: types.Array        # [T, L, r]
  v: types.Array        # [T, r, W]
  error: types.Array    # relative reconstruction error |P* o (U V) - P| / |P|, after fitting


def mpt_decompose(prompts: types.Array, *, rank: int = 1, steps: int = 2000,
                  lr: float = 1e-2) -> MPT:
  """Fits P_t ~ P* o (U_t V_t) to tuned prompts [T, L, W] (Adam on the squared error, in one
  jitted scan), starting from P* = mean_t P_t and U V = 1.

  >>> import jax
  >>> tuned = jax.random.normal(jax.random.key(0), (3, 4, 8))   # 3 tasks' [4, 8] prompts
  >>> mpt = mpt_decompose(tuned, rank=1, steps=100)
  >>> mpt.shared.shape                                           # a new task's initialisation
  (4, 8)
  """
  prompts = jnp.asarray(prompts, jnp.float32)
  if prompts.ndim != 3:
    raise ValueError(f"mpt_decompose: prompts must be [tasks, length, width], got "
                     f"{prompts.shape}")
  if rank < 1:
    raise ValueError(f"mpt_decompose: rank must be >= 1, got {rank}")
  t, length, width = prompts.shape
  c = 1.0 / jnp.sqrt(jnp.float32(rank))
  init = {"shared": jnp.mean(prompts, axis=0), "u": jnp.full((t, length, rank), c),
          "v": jnp.full((t, rank, width), c)}
  return _fit(prompts, init, steps, lr)


@jax.jit
def _reconstruct(p):
  return p["shared"][None] * jnp.matmul(p["u"], p["v"])


def _fit_impl(prompts, init, steps, lr):
  opt = optax.adam(lr)

  def loss(p):
    return jnp.mean(jnp.square(_reconstruct(p) - prompts))

  def body(carry, _):
    p, s = carry
    g = jax.grad(loss)(p)
    updates, s = opt.update(g, s, p)
    return (optax.apply_updates(p, updates), s), None

  (p, _), _ = jax.lax.scan(body, (init, opt.init(init)), None, length=steps)
  err = jnp.linalg.norm(_reconstruct(p) - prompts) / (jnp.linalg.norm(prompts) + 1e-12)
  return MPT(p["shared"], p["u"], p["v"], err)


_fit = jax.jit(_fit_impl, static_argnums=(2,))

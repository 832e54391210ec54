"""Regression tasks of controllable correlation: the synthetic generator of MMoE (Ma et al. 2018).

Two orthogonal unit vectors u1, u2 in R^d; task weights w1 = c u1, w2 = c (p u1 + sqrt(1-p^2) u2),
so cos(w1, w2) = p. Inputs x ~ N(0, I_d), shared by the tasks, and

  y_k = w_k^T x + sum_{i=1..m} sin(alpha_i w_k^T x + beta_i) + eps,   eps ~ N(0, noise^2).

The non-linear part makes the tasks' Pearson correlation lower than p (the paper's point: the
label correlation is controlled but not equal to p). Constants as a public generator of it:
c = 1, m = 10, alpha_i = 1..10, beta_i = i^2 for i = 0..9, noise 0.01.

>>> import jax
>>> data = make(jax.random.key(0), correlation=0.5, num_examples=1000)
>>> data.x.shape, data.y.shape
((1000, 100), (2, 1000))
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtpjax._src import types

ALPHAS = tuple(float(i) for i in range(1, 11))
BETAS = tuple(float(i * i) for i in range(10))


class Correlated(NamedTuple):
  x: types.Array   # [n, d], shared by every task
  y: types.Array   # [tasks, n]
  w: types.Array   # [tasks, d], the tasks' weight vectors


def task_weights(key: types.PRNGKey, correlation: float, dim: int, scale: float = 1.0):
  """[2, dim]: w1 = c u1, w2 = c (p u1 + sqrt(1 - p^2) u2), u1 and u2 orthonormal."""
  if isinstance(correlation, (int, float)) and not -1.0 <= correlation <= 1.0:
    raise ValueError(f"correlation must be in [-1, 1], got {correlation}")
  if dim < 2:
    raise ValueError(f"dim must be >= 2 (two orthogonal directions), got {dim}")
  q, _ = jnp.linalg.qr(jax.random.normal(key, (dim, 2)))
  u1, u2 = q[:, 0], q[:, 1]
  w2 = correlation * u1 + jnp.sqrt(1.0 - correlation ** 2) * u2
  return scale * jnp.stack([u1, w2])


def labels(x: types.Array, w: types.Array, key: types.PRNGKey, noise: float = 0.01,
           alphas=ALPHAS, betas=BETAS) -> types.Array:
  """[tasks, n] labels of inputs x [n, d] for weights w [tasks, d]."""
  z = w @ x.T                                                    # [tasks, n]
  a = jnp.asarray(alphas)[:, None, None]
  b = jnp.asarray(betas)[:, None, None]
  y = z + jnp.sum(jnp.sin(a * z[None] + b), axis=0)
  return y + noise * jax.random.normal(key, y.shape)


def make(key: types.PRNGKey, *, correlation: float, num_examples: int, dim: int = 100,
         scale: float = 1.0, noise: float = 0.01, weights_key=None, alphas=ALPHAS,
         betas=BETAS) -> Correlated:
  """A data set of `num_examples` inputs with both tasks' labels.

  The task weights come from `weights_key` (default: `key`), so train, validation and test
  sets of one problem share weights: pass the same weights_key and different keys. alphas and
  betas (m values each) shape the sines; smaller alphas give smoother tasks.
  """
  if num_examples < 1:
    raise ValueError(f"num_examples must be >= 1, got {num_examples}")
  if not -1.0 <= correlation <= 1.0:
    raise ValueError(f"correlation must be in [-1, 1], got {correlation}")
  if len(alphas) != len(betas):
    raise ValueError(f"alphas and betas need the same length (m), got {len(alphas)} and "
                     f"{len(betas)}")
  return _make(key, key if weights_key is None else weights_key, correlation, num_examples,
               dim, scale, noise, tuple(map(float, alphas)), tuple(map(float, betas)))


@functools.partial(jax.jit, static_argnums=(3, 4, 7, 8))
def _make(key, weights_key, correlation, num_examples, dim, scale, noise, alphas, betas):
  # One compiled program: op by op, the ten sines over [tasks, n] compile one by one.
  _, k_x, k_eps = jax.random.split(key, 3)
  w = task_weights(weights_key, correlation, dim, scale)
  x = jax.random.normal(k_x, (num_examples, dim))
  return Correlated(x, labels(x, w, k_eps, noise, alphas, betas), w)

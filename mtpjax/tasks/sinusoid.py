"""Sinusoid regression (Finn et al. 2017): y = A sin(x - phase), one task per (A, phase).

Protocol defaults follow cbfinn/maml and lmzintgraf/cavia: A ~ U[0.1, 5.0],
phase ~ U[0, pi], x ~ U[-5, 5].
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtpjax._src import types


class Sinusoid(NamedTuple):
  """A sinusoid task family with static support/query sizes."""

  shots: int
  queries: int
  amp_range: tuple = (0.1, 5.0)
  phase_range: tuple = (0.0, math.pi)
  x_range: tuple = (-5.0, 5.0)

  def task_params(self, key: types.PRNGKey):
    """(amplitude, phase) of one task."""
    k_amp, k_phase = jax.random.split(key)
    amp = jax.random.uniform(k_amp, (), minval=self.amp_range[0], maxval=self.amp_range[1])
    phase = jax.random.uniform(k_phase, (), minval=self.phase_range[0],
                               maxval=self.phase_range[1])
    return amp, phase

  def sample(self, key: types.PRNGKey) -> types.Episode:
    """One task: `shots` support and `queries` query points, x and y of shape [n, 1]."""
    k_task, k_x = jax.random.split(key)
    amp, phase = self.task_params(k_task)
    x = jax.random.uniform(k_x, (self.shots + self.queries, 1), minval=self.x_range[0],
                           maxval=self.x_range[1])
    y = amp * jnp.sin(x - phase)
    return types.Episode(types.Batch(x[:self.shots], y[:self.shots]),
                         types.Batch(x[self.shots:], y[self.shots:]))


def family(shots: int, queries: int, **kwargs) -> Sinusoid:
  """Validated constructor.

  >>> fam = family(10, 10)
  >>> ep = fam.sample(jax.random.key(0))
  >>> ep.support.x.shape, ep.query.x.shape
  ((10, 1), (10, 1))
  """
  if int(shots) <= 0 or int(queries) <= 0:
    raise ValueError(f"sinusoid: shots and queries must be positive, got {shots}, {queries}")
  for name in ("amp_range", "phase_range", "x_range"):
    lo, hi = kwargs.get(name, getattr(Sinusoid, "_field_defaults")[name])
    if not lo < hi:
      raise ValueError(f"sinusoid: {name} must be (low, high) with low < high, got {(lo, hi)}")
  return Sinusoid(int(shots), int(queries), **kwargs)

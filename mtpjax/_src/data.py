"""Splitting a fixed set of examples into episodes."""

import jax

from mtpjax._src import types


def split_episode(key: types.PRNGKey, x: types.Array, y: types.Array, *, shots: int,
                  queries: int) -> types.Episode:
  """Draws `shots` support and `queries` query examples, disjoint, from one task's points.

  x: [n, ...], y: [n, ...]. Raises before tracing when shots + queries exceed n.
  """
  n = x.shape[0]
  if y.shape[0] != n:
    raise ValueError(f"split_episode: x has {n} examples but y has {y.shape[0]}")
  if shots <= 0 or queries <= 0:
    raise ValueError(f"split_episode: shots and queries must be positive, got {shots}, {queries}")
  if shots + queries > n:
    raise ValueError(f"split_episode: shots + queries = {shots + queries} exceeds the {n} "
                     "available points of this task")
  order = jax.random.permutation(key, n)
  s, q = order[:shots], order[shots:shots + queries]
  return types.Episode(types.Batch(x[s], y[s]), types.Batch(x[q], y[q]))

"""N-way K-shot episodes drawn on the device from an array of examples grouped by class.

The whole data set lives on the device as one array [classes, examples_per_class, ...]; an
episode is a gather, so the sampler runs inside the jitted meta-step with no host work.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtpjax._src import types


class ClassEpisodes(NamedTuple):
  """A class-episode task family on the device (made by episodes()): sample(key) -> Episode."""

  data: types.Array  # [classes, examples_per_class, ...]
  ways: int
  shots: int
  queries: int

  def sample(self, key: types.PRNGKey) -> types.Episode:
    """One episode: x [ways * shots, ...] / [ways * queries, ...], labels in [0, ways).

    Classes are drawn without replacement and take labels 0..ways-1 in the drawn (random)
    order, so labels are permuted per episode; support and query examples of a class are
    distinct drawings.
    """
    k_cls, k_ex = jax.random.split(key)
    num_classes, per_class = self.data.shape[:2]
    classes = jax.random.choice(k_cls, num_classes, (self.ways,), replace=False)  # [ways]
    n = self.shots + self.queries
    idx = jax.vmap(lambda k: jax.random.permutation(k, per_class)[:n])(
        jax.random.split(k_ex, self.ways))                                         # [ways, n]
    x = self.data[classes[:, None], idx]                                           # [ways, n, ...]
    y = jnp.broadcast_to(jnp.arange(self.ways)[:, None], (self.ways, n))          # [ways, n]
    feat = x.shape[2:]
    support = types.Batch(x[:, :self.shots].reshape((-1,) + feat), y[:, :self.shots].reshape(-1))
    query = types.Batch(x[:, self.shots:].reshape((-1,) + feat), y[:, self.shots:].reshape(-1))
    return types.Episode(support, query)


def episodes(data, *, ways: int, shots: int, queries: int, name: str = "data",
             vocab_size: Optional[int] = None) -> ClassEpisodes:
  """Validated constructor: errors name the field and what the data allows.

  vocab_size: for token data, ids must lie in [0, vocab_size); checked once here, not per
  episode (an id past an embedding table gives garbage, not an error, on accelerators).

  >>> fam = episodes(jnp.zeros((20, 5, 28, 28)), ways=5, shots=1, queries=2)
  >>> fam.sample(jax.random.key(0)).support.x.shape
  (5, 28, 28)
  """
  shape = getattr(data, "shape", None)
  if shape is None or len(shape) < 2:
    raise ValueError(f"{name}: expected an array [classes, examples_per_class, ...], got shape {shape}")
  num_classes, per_class = shape[:2]
  if num_classes == 0 or per_class == 0:
    raise ValueError(f"{name}: empty data set (shape {shape})")
  for field, value in (("ways", ways), ("shots", shots), ("queries", queries)):
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{field} must be a positive integer, got {value!r}")
  if ways > num_classes:
    raise ValueError(f"ways={ways} exceeds the {num_classes} classes available in {name}")
  if shots + queries > per_class:
    raise ValueError(f"shots + queries = {shots} + {queries} exceeds the {per_class} examples "
                     f"per class in {name}")
  # On the device where the data already is: one reduction, no host copy of the set.
  if jnp.issubdtype(data.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(data))):
    bad = int(jnp.sum(~jnp.isfinite(data)))
    raise ValueError(f"{name}: {bad} values are NaN or inf; they would make every loss that "
                     f"touches them NaN")
  if vocab_size is not None:
    lo, hi = int(jnp.min(data)), int(jnp.max(data))
    if lo < 0 or hi >= vocab_size:
      raise ValueError(f"{name}: token ids must lie in [0, {vocab_size}) for a vocabulary of "
                       f"{vocab_size}, found [{lo}, {hi}]")
  return ClassEpisodes(jnp.asarray(data), ways, shots, queries)

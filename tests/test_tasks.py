"""Episode samplers: invariants, and errors that name what the data allows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtpjax as mj

CLASSES, PER_CLASS = 12, 6


def labelled_data():
  # Each example encodes (class, index) so an episode can be traced back to its source.
  c = jnp.arange(CLASSES)[:, None, None]
  i = jnp.arange(PER_CLASS)[None, :, None]
  return jnp.concatenate([jnp.broadcast_to(c, (CLASSES, PER_CLASS, 1)),
                          jnp.broadcast_to(i, (CLASSES, PER_CLASS, 1))], axis=-1)  # [12, 6, 2]


def test_class_episodes_invariants():
  fam = mj.tasks.classification.episodes(labelled_data(), ways=5, shots=2, queries=3)
  first_labels = []
  sample = jax.jit(fam.sample)
  for seed in range(20):
    ep = sample(jax.random.key(seed))
    sx, sy, qx, qy = map(np.asarray, (*ep.support, *ep.query))
    assert sx.shape == (10, 2) and qx.shape == (15, 2)
    # N distinct classes; label -> class is one-to-one and consistent across support/query.
    s_map = {int(l): int(c) for (c, _), l in zip(sx, sy)}
    q_map = {int(l): int(c) for (c, _), l in zip(qx, qy)}
    assert s_map == q_map and len(set(s_map.values())) == 5 and sorted(s_map) == list(range(5))
    assert np.bincount(sy).tolist() == [2] * 5 and np.bincount(qy).tolist() == [3] * 5
    # Support and query drawings are disjoint.
    assert not {tuple(r) for r in sx} & {tuple(r) for r in qx}
    first_labels.append(s_map[0])
  assert len(set(first_labels)) > 3  # labels are permuted per episode


@pytest.mark.parametrize("kwargs,match", [
    (dict(ways=13, shots=1, queries=1), "ways=13 exceeds the 12 classes"),
    (dict(ways=5, shots=4, queries=3), r"shots \+ queries = 4 \+ 3 exceeds the 6 examples"),
    (dict(ways=0, shots=1, queries=1), "ways must be a positive integer"),
    (dict(ways=5, shots=1, queries=-1), "queries must be a positive integer"),
])
def test_class_episodes_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mj.tasks.classification.episodes(labelled_data(), **kwargs)


def test_class_episodes_empty_data():
  with pytest.raises(ValueError, match="empty data set"):
    mj.tasks.classification.episodes(jnp.zeros((0, 5, 3)), ways=1, shots=1, queries=1)
  with pytest.raises(ValueError, match=r"expected an array \[classes"):
    mj.tasks.classification.episodes(jnp.zeros((5,)), ways=1, shots=1, queries=1)


def test_correlated_tasks_have_the_asked_cosine_and_mmoe_labels():
  from mtpjax.tasks import correlated
  for p in (0.0, 0.5, 0.9, 1.0):
    d = correlated.make(jax.random.key(0), correlation=p, num_examples=64, dim=10, scale=2.0)
    w = np.asarray(d.w)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 2.0, rtol=1e-5)
    np.testing.assert_allclose(w[0] @ w[1] / 4.0, p, atol=1e-5)
  # y_k = w_k.x + sum_i sin(alpha_i w_k.x + beta_i) + noise, checked on one input by hand.
  d = correlated.make(jax.random.key(1), correlation=0.5, num_examples=8, dim=4, noise=0.0)
  z = float(d.w[1] @ d.x[3])
  expect = z + sum(np.sin(a * z + b) for a, b in zip(correlated.ALPHAS, correlated.BETAS))
  np.testing.assert_allclose(d.y[1, 3], expect, rtol=1e-4, atol=1e-4)
  # Splits of one problem share the task weights.
  other = correlated.make(jax.random.key(2), correlation=0.5, num_examples=8, dim=4,
                          weights_key=jax.random.key(1))
  assert not np.allclose(other.x, d.x)
  np.testing.assert_array_equal(other.w, d.w)
  with pytest.raises(ValueError, match="correlation"):
    correlated.make(jax.random.key(0), correlation=1.5, num_examples=8)

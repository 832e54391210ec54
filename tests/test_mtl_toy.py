"""The two-objective toy problem (CAGrad, Nash-MTL, FAMO): which methods reach the Pareto set
from the published starting points, with the published budget (35,000 Adam steps, lr 1e-3,
task 1's loss scaled by 0.1). `python -m benchmarks.mtl_toy` runs and plots every method."""

import jax.numpy as jnp
import numpy as np
import pytest

import mtpjax as mj
from benchmarks import mtl_toy



def test_the_pareto_set_is_where_the_gradients_oppose():
  x1 = jnp.array([-7.0, -3.0, 0.0, 3.0, 7.0])
  x2 = mj.tasks.toy.pareto_x2(x1)
  np.testing.assert_allclose(x2[2], -8.3552, atol=2e-4)          # the value the papers quote
  np.testing.assert_allclose(x2, x2[::-1], atol=1e-4)             # symmetric in x1
  import jax
  for a, b in zip(x1[1:-1], x2[1:-1]):
    j = jax.jacrev(mj.tasks.toy.toy_losses)(jnp.stack([a, b]))
    cos = j[0] @ j[1] / (jnp.linalg.norm(j[0]) * jnp.linalg.norm(j[1]))
    assert float(cos) < -0.999
  assert not bool(mj.tasks.toy.on_pareto_set(jnp.array([0.0, -8.2])))
  assert not bool(mj.tasks.toy.on_pareto_set(jnp.array([7.5, -8.43])))


@pytest.mark.parametrize("name,reached", [
    ("mgda", [True] * 5),
    ("nash_mtl", [True] * 5),
    ("famo", [True] * 5),
    # Linear scalarisation is caught in the f-region's local minimum from (9, 9).
    ("equal", [True, True, False, True, True]),
])
def test_which_methods_reach_the_pareto_set_from_the_published_starts(name, reached):
  hp = mtl_toy.HYPERPARAMETERS.get(name, {})
  xs, losses = mtl_toy.toy_trajectories(mj.mtl.get(name, **hp), steps=35_000, every=5_000)
  assert xs.shape == (5, 8, 2) and losses.shape == (5, 8, 2)
  np.testing.assert_allclose(xs[:, 0], mj.tasks.toy.STARTS)
  assert np.asarray(mj.tasks.toy.on_pareto_set(xs[:, -1])).tolist() == reached

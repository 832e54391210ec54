"""The two-objective toy problem of CAGrad (Liu et al. 2021), Nash-MTL and FAMO.

x = (x1, x2); with eps = 5e-6,

  f1 = log(max(|0.5(-x1 - 7) - tanh(-x2)|, eps)) + 6
  f2 = log(max(|0.5(-x1 + 3) + tanh(-x2) + 2|, eps)) + 6
  g1 = ((-x1 + 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
  g2 = ((-x1 - 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
  c1 = max(tanh(0.5 x2), 0),  c2 = max(tanh(-0.5 x2), 0)
  L1 = scale * (c1 f1 + c2 g1),  L2 = c1 f2 + c2 g2

Nash-MTL and FAMO use scale = 0.1 (task 1's loss ten times smaller), which is what separates
the methods: linear scalarisation then follows task 2. The Pareto set is the curve
x1 in [-7, 7], x2 from -8.3552 (at x1 = 0) to -8.4345 (at the ends), the curve where
the two gradients point in opposite directions (`pareto_x2`). The published runs start
from STARTS and take 35,000 Adam steps at lr 1e-3 on x (benchmarks/mtl_toy.py runs them).
"""

import jax
import jax.numpy as jnp


EPS = 5e-6
STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
PARETO_X2 = -8.3552
PARETO_X1 = (-7.0, 7.0)


def toy_losses(x, scale: float = 0.1):
  """[2] losses (L1, L2) at x = [x1, x2]."""
  x1, x2 = x[0], x[1]
  f1 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 - 7) - jnp.tanh(-x2)), EPS)) + 6
  f2 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 + 3) + jnp.tanh(-x2) + 2), EPS)) + 6
  g1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  g2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  c1 = jnp.maximum(jnp.tanh(0.5 * x2), 0)
  c2 = jnp.maximum(jnp.tanh(-0.5 * x2), 0)
  return jnp.stack([scale * (c1 * f1 + c2 * g1), c1 * f2 + c2 * g2])


def pareto_x2(x1, scale: float = 0.1, iters: int = 40):
  """The Pareto set's x2 for each x1 in [-7, 7]: where the two gradients are opposite
  (det of the Jacobian is 0), found by bisection on [-8.45, -8.34]. It runs from -8.3552
  at x1 = 0 to -8.4345 at x1 = +-7."""
  jac = jax.jacrev(lambda x: toy_losses(x, scale))

  def det(x1, x2):
    j = jac(jnp.stack([x1, x2]))
    return j[0, 0] * j[1, 1] - j[0, 1] * j[1, 0]

  def one(x1):
    def body(_, lohi):
      lo, hi = lohi
      mid = 0.5 * (lo + hi)
      same = jnp.sign(det(x1, mid)) == jnp.sign(det(x1, lo))
      return jnp.where(same, mid, lo), jnp.where(same, hi, mid)
    lo, hi = jax.lax.fori_loop(0, iters, body, (jnp.float32(-8.45), jnp.float32(-8.34)))
    return 0.5 * (lo + hi)

  x1 = jnp.clip(jnp.asarray(x1, jnp.float32), PARETO_X1[0] + 1e-3, PARETO_X1[1] - 1e-3)
  return jax.vmap(one)(x1.reshape(-1)).reshape(x1.shape)


def on_pareto_set(x, tol: float = 0.03, scale: float = 0.1):
  """Whether points x [..., 2] lie on the Pareto set: x1 in [-7, 7] (within tol) and x2
  within tol of the set's x2 at that x1. The default tol (0.03, against a set whose x2 spans
  0.08 and a plot 20 wide) accepts runs still creeping along x2, where the gradient is
  ~1e-3, at the end of the budget."""
  x = jnp.asarray(x, jnp.float32)
  inside = (x[..., 0] >= PARETO_X1[0] - tol) & (x[..., 0] <= PARETO_X1[1] + tol)
  return inside & (jnp.abs(x[..., 1] - pareto_x2(x[..., 0], scale)) < tol)

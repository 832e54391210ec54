"""Every balancer against independently computed expectations, in float64, and the guarantees
every one of the 14 keeps (dtypes under x64, degenerate and non-finite inputs, clear errors).

The problem is linear-quadratic: task i's loss is 1/2 |A_i x - b_i|^2, so its gradient
A_i^T (A_i x - b_i) is known in closed form, and a trajectory of plain SGD on x can be
replayed in NumPy step by step. The NumPy side follows the reference implementations
(LibMTL and the authors' code): torch's Adam with L2 `weight_decay` for FAMO's logits, the raw
Nash system, GradNorm's equally weighted first epoch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtpjax as mj

KEY = jax.random.key(0)
T, D = 3, 5
RNG = np.random.default_rng(7)
A = RNG.normal(size=(T, 4, D))
B = RNG.normal(size=(T, 4))
X0 = RNG.normal(size=D)


def losses_and_grads(x):
  r = np.einsum("tkd,d->tk", A, x) - B
  return 0.5 * np.sum(r ** 2, axis=1), np.einsum("tkd,tk->td", A, r)


def hp_of(name):
  return {"weights": [1.0, 2.0, 0.5]} if name == "fixed" else {}


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def trajectory(name, steps=20, lr=0.05, **hp):
  """mtpjax's balancer on the problem under x64: the weights and x of every step."""
  bal = mj.mtl.get(name, **hp)
  state = bal.init(T, dtype=jnp.float64)
  update = jax.jit(bal.update)
  x, ws, states = X0.copy(), [], []
  for t in range(steps):
    loss, grad = losses_and_grads(x)
    g, state, info = update(jnp.asarray(loss), jnp.asarray(grad), state,
                            jax.random.fold_in(KEY, t))
    assert g.dtype == jnp.float64
    ws.append(np.asarray(info["weights"]))
    states.append(state)
    x = x - lr * np.asarray(g)
  return np.array(ws), states


class Adam:
  """torch.optim.Adam's update (L2 weight decay added to the gradient), in NumPy."""

  def __init__(self, p, lr, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
    self.p, self.lr, self.wd, self.b1, self.b2, self.eps = p.copy(), lr, weight_decay, b1, b2, eps
    self.m, self.v, self.t = np.zeros_like(p), np.zeros_like(p), 0

  def step(self, g):
    g = g + self.wd * self.p
    self.t += 1
    self.m = self.b1 * self.m + (1 - self.b1) * g
    self.v = self.b2 * self.v + (1 - self.b2) * g * g
    mhat, vhat = self.m / (1 - self.b1 ** self.t), self.v / (1 - self.b2 ** self.t)
    self.p = self.p - self.lr * mhat / (np.sqrt(vhat) + self.eps)
    return self.p


def softmax(z):
  e = np.exp(z - z.max())
  return e / e.sum()


# --- Against the references, float64 -------------------------------------------------------

def test_famo_follows_the_authors_update_with_l2_decay(x64):
  lr, gamma = 0.025, 1e-3
  ws, states = trajectory("famo", lr=0.05)
  # The authors' FAMO: weights from softmax(w) and the current losses; then w moves by
  # Adam(weight_decay=gamma) along softmax's Jacobian applied to the log-loss decrease.
  x, w, opt, prev = X0.copy(), np.zeros(T), None, None
  opt = Adam(w, lr, weight_decay=gamma)
  for t in range(20):
    loss, grad = losses_and_grads(x)
    if prev is not None:
      delta = np.log(prev + 1e-8) - np.log(loss + 1e-8)
      z = softmax(w)
      jac = np.diag(z) - np.outer(z, z)
      w = opt.step(jac.T @ delta)
    z = softmax(w)
    c = np.sum(z / (loss + 1e-8))
    weights = z / (c * (loss + 1e-8))
    np.testing.assert_allclose(ws[t], weights, rtol=1e-10, atol=1e-14)
    prev = loss
    x = x - 0.05 * weights @ grad
  np.testing.assert_allclose(states[-1]["w"], w, rtol=1e-10, atol=1e-14)


def test_gradnorm_weighs_equally_for_its_first_epoch_then_follows_libmtl(x64):
  lr, alpha, warmup = 1e-2, 1.5, 3
  bal = mj.mtl.get("gradnorm", lr=lr, alpha=alpha, warmup=warmup)
  state = bal.init(T, dtype=jnp.float64)
  x, s, initial = X0.copy(), np.ones(T), np.zeros(T)
  opt = Adam(s, lr)
  for t in range(20):
    loss, grad = losses_and_grads(x)
    g, state, info = jax.jit(bal.update)(jnp.asarray(loss), jnp.asarray(grad), state)
    if t < warmup:                    # LibMTL's first epoch: equal weights, L(0) its mean
      want = np.ones(T)
      initial += loss / warmup
    else:
      want = T * softmax(s)
      norms = np.linalg.norm(grad, axis=1)
      r = (loss / initial) / np.mean(loss / initial)
      target = np.mean(want * norms) * r ** alpha
      # d/ds sum_i |T softmax(s)_i |g_i| - target_i|, the target held constant
      sign = np.sign(want * norms - target)
      z = softmax(s)
      jac = T * (np.diag(z) - np.outer(z, z))
      s = opt.step(jac.T @ (sign * norms))
    np.testing.assert_allclose(info["weights"], want, rtol=1e-10)
    np.testing.assert_allclose(g, want @ grad, rtol=1e-10, atol=1e-13)
    x = x - 0.05 * np.asarray(g)


def test_nash_mtl_solves_the_raw_system_at_every_step(x64):
  ws, states = trajectory("nash_mtl", max_norm=0.0)
  x = X0.copy()
  for t in range(20):
    loss, grad = losses_and_grads(x)
    a = ws[t]
    np.testing.assert_allclose(a * (grad @ grad.T @ a), 1.0, rtol=1e-8)
    x = x - 0.05 * a @ grad
  # Scaling every loss by 1e-3 scales the raw system's alpha by 1e3: the update is unchanged
  # (the reference's invariance); the normalised system's alpha would not move at all.
  bal = mj.mtl.get("nash_mtl", max_norm=0.0)
  loss, grad = losses_and_grads(X0)
  g1, _, _ = bal.update(jnp.asarray(loss), jnp.asarray(grad), bal.init(T, dtype=jnp.float64))
  g2, _, _ = bal.update(jnp.asarray(loss * 1e-3), jnp.asarray(grad * 1e-3),
                        bal.init(T, dtype=jnp.float64))
  np.testing.assert_allclose(g2, g1, rtol=1e-6)


def test_mgda_is_the_exact_min_norm_point(x64):
  # Two tasks: the min-norm point of the segment [g1, g2] in closed form.
  g = np.array([[1.0, 0.0, 0.0], [0.2, 1.0, 0.0]])
  gamma = np.clip((g[1] - g[0]) @ g[1] / np.sum((g[1] - g[0]) ** 2), 0, 1)
  want = np.array([gamma, 1 - gamma])
  _, _, info = mj.mtl.get("mgda").update(jnp.ones(2), jnp.asarray(g),
                                         mj.mtl.get("mgda").init(2, dtype=jnp.float64))
  np.testing.assert_allclose(info["weights"], want, rtol=1e-12)
  # Three tasks on the problem: KKT of min |a G|^2 on the simplex (a G G^T equal on the
  # support, larger off it).
  _, grad = losses_and_grads(X0)
  _, _, info = mj.mtl.get("mgda", iters=5000).update(jnp.ones(T), jnp.asarray(grad), {})
  a = np.asarray(info["weights"])
  ga = grad @ grad.T @ a
  support = a > 1e-9
  np.testing.assert_allclose(ga[support], ga[support].mean(), rtol=1e-6)
  assert np.all(ga[~support] >= ga[support].mean() - 1e-9)


def test_uncertainty_and_dwa_trajectories_follow_their_formulas(x64):
  ws, _ = trajectory("uncertainty", lr=0.05)
  x, s = X0.copy(), np.full(T, -0.5)
  opt = Adam(s, 1e-3)
  for t in range(20):
    loss, grad = losses_and_grads(x)
    np.testing.assert_allclose(ws[t], 1 / (2 * np.exp(s)), rtol=1e-12)
    w = ws[t]
    s = opt.step(-loss / (2 * np.exp(s)) + 0.5)
    x = x - 0.05 * w @ grad
  ws, _ = trajectory("dwa", lr=0.05)
  x, hist = X0.copy(), []
  for t in range(20):
    loss, grad = losses_and_grads(x)
    want = (np.ones(T) if t < 2 else T * softmax((hist[-1] / hist[-2]) / 2.0))
    np.testing.assert_allclose(ws[t], want, rtol=1e-12)
    hist.append(loss)
    x = x - 0.05 * want @ grad


@pytest.mark.parametrize("name", ["gradvac", "imtl", "pcgrad", "cagrad", "aligned_mtl", "rlw"])
def test_gradient_methods_keep_their_defining_property_along_a_trajectory(name, x64):
  """The stateful ones over 20 steps in float64: each step's weights reproduce the update,
  and IMTL's projections stay equal, Aligned-MTL's rows orthogonal."""
  ws, states = trajectory(name)
  x = X0.copy()
  for t in range(20):
    loss, grad = losses_and_grads(x)
    w = ws[t]
    if name == "imtl":
      s = np.zeros(T) if t == 0 else np.asarray(states[t - 1]["s"])
      gs = np.exp(s)[:, None] * grad
      u = gs / np.linalg.norm(gs, axis=1, keepdims=True)
      proj = u @ (w @ grad)
      np.testing.assert_allclose(proj, proj[0], rtol=1e-8)
    x = x - 0.05 * w @ grad
  assert np.all(np.isfinite(ws))


# --- What every method guarantees ----------------------------------------------------------

METHODS = sorted(mj.mtl.METHODS)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", METHODS)
def test_every_method_runs_under_x64_with_both_input_dtypes(name, dtype, x64):
  bal = mj.mtl.get(name, **hp_of(name))
  state = bal.init(T, dtype=dtype)
  loss, grad = losses_and_grads(X0)
  losses, grads = jnp.asarray(loss, dtype), {"g": jnp.asarray(grad, dtype)}

  def steps(state):  # a scan's carry must keep its type: the state's dtypes may not drift
    def body(state, k):
      g, state, info = bal.update(losses, grads, state, k)
      return state, (g, info["weights"])
    return jax.lax.scan(body, state, jax.random.split(KEY, 3))

  with _no_dtype_warning():
    state2, (g, w) = jax.jit(steps)(state)
  assert g["g"].dtype == dtype and np.all(np.isfinite(g["g"])) and np.all(np.isfinite(w))
  for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(state2)):
    assert before.dtype == after.dtype
  if bal.loss_only:
    w, _, _ = jax.jit(bal.weights)(losses, state, KEY)
    assert w.dtype == dtype


class _no_dtype_warning:
  """Fails on JAX's float64-to-float32 scatter warning (an error in future releases)."""

  def __enter__(self):
    import warnings
    self._catch = warnings.catch_warnings(record=True)
    self._caught = self._catch.__enter__()
    warnings.simplefilter("always")

  def __exit__(self, *exc):
    self._catch.__exit__(*exc)
    bad = [str(w.message) for w in self._caught if "scatter" in str(w.message)
           or "will result in an error" in str(w.message)]
    assert not bad, bad


@pytest.mark.parametrize("name", METHODS)
def test_all_zero_gradients_give_a_zero_update_and_finite_weights(name):
  bal = mj.mtl.get(name, **hp_of(name))
  g, state, info = jax.jit(bal.update)(jnp.ones(T), {"g": jnp.zeros((T, D))}, bal.init(T), KEY)
  np.testing.assert_array_equal(g["g"], 0.0)
  assert np.all(np.isfinite(info["weights"])) and np.all(np.abs(info["weights"]) < 10)
  assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(state))


@pytest.mark.parametrize("where", ["loss", "grad"])
@pytest.mark.parametrize("name", METHODS)
def test_a_non_finite_input_gives_a_non_finite_update_and_keeps_the_state(name, where):
  bal = mj.mtl.get(name, **hp_of(name))
  loss, grad = losses_and_grads(X0)
  loss, grad = np.float32(loss), np.float32(grad)
  if where == "loss":
    loss[1] = np.nan
  else:
    grad[2, 0] = np.inf
  state = bal.init(T)
  g, new_state, info = jax.jit(bal.update)(jnp.asarray(loss), {"g": jnp.asarray(grad)}, state,
                                           KEY)
  assert not np.all(np.isfinite(g["g"])) and not np.all(np.isfinite(info["weights"]))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
    np.testing.assert_array_equal(a, b)
  if bal.loss_only and where == "loss":
    w, _, _ = jax.jit(bal.weights)(jnp.asarray(loss), state, KEY)
    assert not np.all(np.isfinite(w))


@pytest.mark.parametrize("name", METHODS)
def test_wrong_task_counts_and_ranks_are_clear_errors_at_trace_time(name):
  bal = mj.mtl.get(name, **hp_of(name))
  state = bal.init(T)
  with pytest.raises(ValueError, match=rf"{name}: task_losses must be one scalar loss per task"):
    jax.jit(bal.update)(jnp.ones((T, 1)), {"g": jnp.zeros((T, D))}, state, KEY)
  with pytest.raises(ValueError, match=rf"{name}: every leaf of task_grads needs the leading"):
    jax.jit(bal.update)(jnp.ones(T), {"g": jnp.zeros((T + 1, D))}, state, KEY)
  if jax.tree.leaves(state) or name == "fixed":  # a stateless method has no count to hold
    with pytest.raises(ValueError, match=rf"{name}: (2 task losses, but the state was built "
                                         rf"by init\(3\)|3 weights for 2 task losses)"):
      jax.jit(bal.update)(jnp.ones(2), {"g": jnp.zeros((2, D))}, state, KEY)

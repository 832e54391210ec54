"""Multi-task balancing methods: each one's defining property, on small gradient matrices."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtpjax as mj

KEY = jax.random.key(0)


def as_tree(mat):
  """Per-task gradients [T, D] as a pytree with a leading task axis (two leaves)."""
  mat = jnp.asarray(mat, jnp.float32)
  return {"a": mat[:, :2], "b": {"c": mat[:, 2:].reshape(mat.shape[0], -1, 1)}}


def flat(tree):
  return np.concatenate([np.ravel(tree["a"]), np.ravel(tree["b"]["c"])])


def run(name, mat, losses=None, state=None, **hp):
  bal = mj.mtl.get(name, **hp)
  mat = np.asarray(mat, np.float32)
  losses = jnp.ones(mat.shape[0]) if losses is None else jnp.asarray(losses, jnp.float32)
  state = bal.init(mat.shape[0]) if state is None else state
  grads, state, info = jax.jit(bal.update)(losses, as_tree(mat), state, KEY)
  return flat(grads), state, info


RNG = np.random.default_rng(0)
G3 = RNG.normal(size=(3, 6)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(mj.mtl.METHODS))
def test_every_method_combines_with_its_reported_weights_under_jit(name):
  hp = {"weights": [1.0, 2.0, 0.5]} if name == "fixed" else {}
  g, _, info = run(name, G3, losses=[1.0, 2.0, 3.0], **hp)
  w = np.asarray(info["weights"])
  assert w.shape == (3,) and np.all(np.isfinite(w))
  np.testing.assert_allclose(g, w @ G3, rtol=1e-4, atol=1e-5)


def test_loss_only_methods_offer_weights_without_gradients():
  for name in ("equal", "rlw", "uncertainty", "dwa", "famo"):
    bal = mj.mtl.get(name)
    assert bal.loss_only and bal.weights is not None
    w, _, _ = bal.weights(jnp.array([1.0, 2.0]), bal.init(2), KEY)
    assert w.shape == (2,)
  for name in ("mgda", "pcgrad", "cagrad", "nash_mtl", "aligned_mtl", "imtl", "gradnorm",
               "gradvac"):
    assert not mj.mtl.get(name).loss_only
  np.testing.assert_allclose(run("equal", G3)[0], G3.sum(0), rtol=1e-6)  # LibMTL's EW: a sum


def test_mgda_finds_the_min_norm_point_of_the_convex_hull():
  g1, g2 = np.array([1.0, 0, 0, 0]), np.array([0.2, 1.0, 0, 0])
  gamma = np.clip((g2 - g1) @ g2 / np.sum((g1 - g2) ** 2), 0, 1)  # closed form for two
  g, _, info = run("mgda", np.stack([g1, g2]))
  np.testing.assert_allclose(info["weights"], [gamma, 1 - gamma], atol=1e-4)
  # Three tasks: optimality on the simplex (KKT: (M a)_i >= a^T M a, equal where a_i > 0),
  # and no point of a fine grid of the simplex has a smaller norm.
  _, _, info = run("mgda", G3)
  a = np.asarray(info["weights"])
  m = G3 @ G3.T
  assert abs(a.sum() - 1) < 1e-5 and np.all(a >= -1e-7)
  assert np.all(m @ a >= a @ m @ a - 1e-4)
  grid = [np.array([i, j, 40 - i - j]) / 40 for i in range(41) for j in range(41 - i)]
  assert a @ m @ a <= min(p @ m @ p for p in grid) + 1e-5


def test_pcgrad_removes_each_conflict_and_keeps_agreeing_gradients():
  g1, g2 = np.array([1.0, 0.0, 0, 0]), np.array([-1.0, 1.0, 0, 0])
  proj1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
  proj2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
  g, _, _ = run("pcgrad", np.stack([g1, g2]))
  np.testing.assert_allclose(g, proj1 + proj2, atol=1e-6)
  assert abs(proj1 @ g2) < 1e-6 and abs(proj2 @ g1) < 1e-6
  agree = np.array([[1.0, 0.5, 0, 0], [0.5, 1.0, 0, 0]])
  np.testing.assert_allclose(run("pcgrad", agree)[0], agree.sum(0), atol=1e-6)


def test_gradvac_raises_the_cosine_to_its_target():
  g1, g2 = np.array([1.0, 0.0, 0, 0]), np.array([0.0, 2.0, 0, 0])  # cosine 0
  state = {"rho": jnp.array([[0.0, 0.5], [0.5, 0.0]])}
  g, new, info = run("gradvac", np.stack([g1, g2]), state=state, beta=0.1)
  w = np.asarray(info["weights"])
  pc1 = g1 + (w[1] - 1) * g2  # task 1's modified gradient (task 2's own part is 1)
  cos = pc1 @ g2 / np.linalg.norm(pc1) / np.linalg.norm(g2)
  np.testing.assert_allclose(cos, 0.5, atol=1e-5)
  np.testing.assert_allclose(new["rho"][0, 1], 0.9 * 0.5 + 0.1 * 0.0, atol=1e-6)


def test_cagrad_is_the_mean_at_c0_and_solves_its_inner_problem():
  g, _, _ = run("cagrad", G3, c=0.0)
  np.testing.assert_allclose(g, G3.mean(0), rtol=1e-5, atol=1e-6)
  c = 0.5
  _, _, info = run("cagrad", G3, c=c, rescale=0)
  w = np.asarray(info["w"])
  a = G3 @ G3.T
  b = np.full(3, 1 / 3)
  k = c * np.sqrt(a.mean())
  f = lambda w: w @ a @ b + k * np.sqrt(w @ a @ w)
  grid = [np.array([i, j, 60 - i - j]) / 60 for i in range(61) for j in range(61 - i)]
  assert f(w) <= min(f(p) for p in grid) + 1e-4
  # d = g0 + c |g0| g_w / |g_w|
  g0 = G3.mean(0)
  gw = w @ G3
  want = g0 + c * np.linalg.norm(g0) * gw / np.linalg.norm(gw)
  np.testing.assert_allclose(run("cagrad", G3, c=c, rescale=0)[0], want, rtol=1e-4)
  np.testing.assert_allclose(run("cagrad", G3, c=c, rescale=1)[0], want / (1 + c ** 2),
                             rtol=1e-4)


def test_nash_mtl_weights_solve_the_bargaining_condition():
  _, state, info = run("nash_mtl", G3, max_norm=0.0)
  a = np.asarray(info["weights"])
  m = G3 @ G3.T   # the raw system, as the reference code: alpha_i (G G^T alpha)_i = 1
  assert np.all(a > 0) and float(info["residual"]) < 1e-4
  np.testing.assert_allclose(m @ a, 1 / a, rtol=1e-3)
  # Orthogonal gradients: alpha_i = 1 / sqrt(M_ii), so every task gets the same |alpha_i g_i|.
  ortho = np.diag([1.0, 3.0, 0.5, 0.0])[:3]
  g, _, info = run("nash_mtl", ortho, max_norm=0.0)
  contrib = np.asarray(info["weights"]) * np.array([1.0, 3.0, 0.5])
  np.testing.assert_allclose(contrib, contrib[0], rtol=1e-4)
  # Warm start: the next step starts from the solution.
  np.testing.assert_allclose(state["alpha"], a)
  # The default clips the combined gradient to norm 1; the weights stay proportional to alpha.
  g, _, info = run("nash_mtl", G3)
  assert np.linalg.norm(a @ G3) > 1.0
  np.testing.assert_allclose(np.linalg.norm(g), 1.0, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(info["weights"]) / a, 1 / np.linalg.norm(a @ G3),
                             rtol=1e-4)


def test_aligned_mtl_makes_the_task_gradients_orthonormal_to_one_scale():
  _, _, info = run("aligned_mtl", G3)
  m = G3 @ G3.T
  lam, vec = np.linalg.eigh(m)
  b = np.sqrt(lam.min()) * vec @ np.diag(lam ** -0.5) @ vec.T
  aligned = b @ G3
  np.testing.assert_allclose(aligned @ aligned.T, lam.min() * np.eye(3), atol=1e-3)
  np.testing.assert_allclose(info["weights"], b.sum(0), rtol=1e-4)


def test_imtl_gives_equal_projections_on_every_unit_gradient():
  g, _, info = run("imtl", G3)
  units = G3 / np.linalg.norm(G3, axis=1, keepdims=True)
  proj = units @ g
  np.testing.assert_allclose(proj, proj[0], rtol=1e-4)
  np.testing.assert_allclose(np.sum(info["alpha"]), 1.0, rtol=1e-5)


def test_uncertainty_weights_converge_to_half_the_inverse_loss():
  bal = mj.mtl.get("uncertainty", lr=0.05)
  losses = jnp.array([0.5, 2.0])
  state = bal.init(2)
  step = jax.jit(bal.weights)
  for _ in range(600):
    w, state, _ = step(losses, state)
  # Stationary point of L / (2 e^s) + s / 2: e^s = L, so the weight 1 / (2 e^s) = 1 / (2 L).
  np.testing.assert_allclose(np.exp(state["s"]), losses, rtol=2e-2)


def test_dwa_weights_follow_the_loss_ratio_of_the_last_two_periods():
  bal = mj.mtl.get("dwa", temperature=2.0, period=2)
  state = bal.init(2)
  history = [[1.0, 1.0], [1.0, 1.0], [0.5, 1.0], [0.5, 1.0]]  # two periods
  for losses in history:
    w, state, _ = bal.weights(jnp.array(losses), state)
    np.testing.assert_allclose(w, [1.0, 1.0])  # weights 1 during the first two periods
  w, _, _ = bal.weights(jnp.array([0.5, 1.0]), state)
  r = np.array([0.5, 1.0])  # mean losses of period 2 over period 1
  want = 2 * np.exp(r / 2) / np.exp(r / 2).sum()
  np.testing.assert_allclose(w, want, rtol=1e-6)


def test_famo_weights_and_the_update_that_favours_the_slower_task():
  bal = mj.mtl.get("famo", lr=0.1)
  state = bal.init(2)
  losses = jnp.array([1.0, 4.0])
  w, state, info = bal.weights(losses, state)
  z = np.asarray(info["z"])
  np.testing.assert_allclose(z, [0.5, 0.5])
  d = np.asarray(losses) + 1e-8
  np.testing.assert_allclose(w, z / (np.sum(z / d) * d), rtol=1e-6)
  # The gradient of sum_i w_i L_i equals that of sum_i z_i log L_i / c (FAMO's objective).
  # Task 0's loss halves, task 1's stays: task 1 (slower) gets more weight next.
  _, state, info = bal.weights(jnp.array([0.5, 4.0]), state)
  assert info["z"][1] > info["z"][0]


def test_gradnorm_learns_weights_that_sum_to_the_number_of_tasks():
  bal = mj.mtl.get("gradnorm", alpha=1.5, lr=0.05)
  state = bal.init(2)
  mat = as_tree(np.array([[10.0, 0, 0, 0], [0, 0.1, 0, 0]]))
  update = jax.jit(bal.update)
  for _ in range(200):
    _, state, info = update(jnp.array([1.0, 1.0]), mat, state)
  w = np.asarray(info["weights"])
  np.testing.assert_allclose(w.sum(), 2.0, rtol=1e-5)
  assert w[1] > w[0]  # the task with the small gradient is up-weighted


def test_rlw_draws_weights_on_the_simplex():
  bal = mj.mtl.get("rlw")
  ws = [bal.weights(jnp.ones(3), {}, jax.random.key(i))[0] for i in range(3)]
  for w in ws:
    np.testing.assert_allclose(np.sum(w), 1.0, rtol=1e-6)
  assert not np.allclose(ws[0], ws[1])
  with pytest.raises(ValueError, match="pass key"):
    bal.weights(jnp.ones(3), {}, None)


def test_unknown_methods_and_bad_hyperparameters_are_clear_errors():
  with pytest.raises(ValueError, match="unknown balancing method 'nash'"):
    mj.mtl.get("nash")
  with pytest.raises(ValueError, match="cagrad"):
    mj.mtl.get("cagrad", alpha=1.0)
  with pytest.raises(ValueError, match="3 weights for 2 tasks"):
    mj.mtl.get("fixed", weights=[1, 2, 3]).init(2)


def test_per_task_gradients_by_one_vmap_feed_the_balancer():
  """The intended use: vmap(grad) over tasks inside one jitted step, no Python loop."""
  x = jnp.asarray(RNG.normal(size=(3, 8, 4)), jnp.float32)   # 3 tasks' inputs
  y = jnp.asarray(RNG.normal(size=(3, 8)), jnp.float32)
  params = {"w": jnp.zeros(4), "b": jnp.zeros(())}

  def task_loss(p, xt, yt):
    return jnp.mean((xt @ p["w"] + p["b"] - yt) ** 2)

  bal = mj.mtl.get("mgda")

  @jax.jit
  def step(p, state):
    losses, grads = jax.vmap(jax.value_and_grad(task_loss), in_axes=(None, 0, 0))(p, x, y)
    g, state, info = bal.update(losses, grads, state)
    return jax.tree.map(lambda a, b: a - 0.1 * b, p, g), state, info

  state = bal.init(3)
  first = [float(task_loss(params, x[t], y[t])) for t in range(3)]
  for _ in range(30):
    params, state, info = step(params, state)
  last = [float(task_loss(params, x[t], y[t])) for t in range(3)]
  assert all(l < f for l, f in zip(last, first))  # a common descent direction for every task


def test_methods_table_lists_every_method_once():
  assert len(set(mj.mtl.METHODS)) == len(mj.mtl.METHODS) == 14
  assert set(itertools.chain(mj.mtl.METHODS)) >= {"nash_mtl", "famo", "aligned_mtl"}


# --- The multi-task step -----------------------------------------------------------------------

def mtl_problem(num_tasks=3, n=16, d=4):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(num_tasks, n, d)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(num_tasks, n)), jnp.float32)
  params = {"shared": {"w": jnp.asarray(rng.normal(size=(d, d)), jnp.float32)},
            "head": {"v": jnp.asarray(rng.normal(size=(num_tasks, d)), jnp.float32)}}

  def loss_fn(p, batch):
    bx, by = batch
    return jnp.mean((jnp.tanh(bx @ p["shared"]["w"]) @ p["head"]["v"] - by) ** 2)

  return params, (x, y), loss_fn


def manual_grads(params, batches, loss_fn, weights, head_weights=None):
  """The shared gradient sum_i w_i g_i and each task's head gradient times head_weights_i
  (the same weights by default)."""
  head_weights = weights if head_weights is None else head_weights
  x, y = batches
  t = len(weights)
  per = [jax.grad(loss_fn)({"shared": params["shared"],
                            "head": {"v": params["head"]["v"][i]}}, (x[i], y[i]))
         for i in range(t)]
  shared = sum(w * g["shared"]["w"] for w, g in zip(weights, per))
  head = jnp.stack([w * g["head"]["v"] for w, g in zip(head_weights, per)])
  return shared, head


@pytest.mark.parametrize("name", ["equal", "fixed", "mgda", "nash_mtl"])
def test_multitask_step_is_the_gradient_of_the_weighted_loss(name):
  import optax
  params, batches, loss_fn = mtl_problem()
  hp = {"weights": [0.5, 1.0, 2.0]} if name == "fixed" else {}
  trainer = mj.mtl.multitask_trainer(loss_fn, optax.sgd(1.0), mj.mtl.get(name, **hp),
                                     num_tasks=3, donate=False)
  state = trainer.init(params, key=KEY)
  new, metrics = trainer.step(state, batches)
  w = np.asarray(metrics["weights"])
  # A loss-only method differentiates sum_i w_i L_i, so each head gets w_i times its gradient;
  # a gradient method balances only the shared roles and gives each head its own task's
  # gradient, unweighted (LibMTL's habit).
  head_w = w if mj.mtl.get(name, **hp).loss_only else np.ones(3)
  g_shared, g_head = manual_grads(params, batches, loss_fn, w, head_w)
  np.testing.assert_allclose(params["shared"]["w"] - new.params["shared"]["w"], g_shared,
                             rtol=1e-4, atol=1e-6)
  # Each task's head gets its own task's gradient, nothing from the others.
  np.testing.assert_allclose(params["head"]["v"] - new.params["head"]["v"], g_head,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["task_losses"],
                             [loss_fn(trainer.task_params(params, t), (batches[0][t], batches[1][t]))
                              for t in range(3)], rtol=1e-5)


def test_loss_only_path_equals_the_per_task_gradient_path():
  """A loss-only method takes one gradient of sum_i w_i L_i; forcing the per-task path on the
  same weights gives the same shared step, and heads that take their own gradient unweighted
  (the gradient methods' rule) instead of w_i times it."""
  import optax
  params, batches, loss_fn = mtl_problem()
  famo = mj.mtl.get("famo")
  forced = mj.mtl.Balancer(famo.init, famo.update, loss_only=False)
  out = []
  for bal in (famo, forced):
    trainer = mj.mtl.multitask_trainer(loss_fn, optax.sgd(0.1), bal, num_tasks=3,
                                       donate=False)
    state, metrics = trainer.step(trainer.init(params, key=KEY), batches)
    out.append((state.params, np.asarray(metrics["weights"])))
  (loss_only, w), (per_task, w2) = out
  np.testing.assert_allclose(w, w2, rtol=1e-6)
  assert not np.allclose(w, 1.0)
  np.testing.assert_allclose(loss_only["shared"]["w"], per_task["shared"]["w"], rtol=1e-5,
                             atol=1e-6)
  step_lo = np.asarray(params["head"]["v"] - loss_only["head"]["v"])
  step_pt = np.asarray(params["head"]["v"] - per_task["head"]["v"])
  np.testing.assert_allclose(step_lo, w[:, None] * step_pt, rtol=1e-4, atol=1e-7)


def test_multitask_inputs_without_the_task_axis_are_clear_errors():
  import optax
  params, (x, y), loss_fn = mtl_problem()
  trainer = mj.mtl.multitask_trainer(loss_fn, optax.sgd(0.1), mj.mtl.get("equal"), num_tasks=3)
  state = trainer.init(params, key=KEY)
  with pytest.raises(ValueError, match="leading task axis of 3"):
    trainer.step(state, (x[:2], y[:2]))
  bad = {**params, "head": {"v": params["head"]["v"][:2]}}
  with pytest.raises(ValueError, match="per-task roles"):
    trainer.init(bad, key=KEY)


def mixed_layout(batches):
  """The same examples as one mixed batch with a task id each."""
  x, y = batches
  t, n = y.shape
  return jnp.repeat(jnp.arange(t), n), (x.reshape(t * n, -1), y.reshape(t * n))


@pytest.mark.parametrize("name", ["equal", "mgda"])
def test_mixed_batches_give_the_step_of_one_batch_per_task(name):
  import optax
  params, batches, loss_fn = mtl_problem()

  def per_example(p, batch):
    bx, by = batch
    return (jnp.tanh(bx @ p["shared"]["w"]) @ p["head"]["v"] - by) ** 2

  out = []
  for fn, b, mixed in ((loss_fn, batches, False), (per_example, mixed_layout(batches), True)):
    trainer = mj.mtl.multitask_trainer(fn, optax.sgd(0.5), mj.mtl.get(name), num_tasks=3,
                                       mixed=mixed, donate=False)
    state, metrics = trainer.step(trainer.init(params, key=KEY), b)
    out.append((state.params, metrics["task_losses"]))
  np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(out[0][0]), jax.tree.leaves(out[1][0])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  trainer = mj.mtl.multitask_trainer(per_example, optax.sgd(0.5), mj.mtl.get(name),
                                     num_tasks=3, mixed=True)
  ids, (x, y) = mixed_layout(batches)
  with pytest.raises(ValueError, match="task_ids"):
    trainer.step(trainer.init(params, key=KEY), (ids[:5], (x, y)))


def test_representation_gradients_weigh_tasks_by_dL_dz_then_take_one_gradient():
  """MGDA-UB: the weights are MGDA's min-norm point of the gradients at the representation,
  and the step is the gradient of the weighted loss."""
  import optax
  params, batches, loss_fn = mtl_problem()
  represent = lambda p, b: jnp.tanh(b[0] @ p["shared"]["w"])
  head_loss = lambda p, z, b: jnp.mean((z @ p["head"]["v"] - b[1]) ** 2)
  trainer = mj.mtl.multitask_trainer(loss_fn, optax.sgd(1.0), mj.mtl.get("mgda"), num_tasks=3,
                                     represent=represent, head_loss=head_loss, donate=False)
  new, metrics = trainer.step(trainer.init(params, key=KEY), batches)
  z_grads = []
  for t in range(3):
    p = trainer.task_params(params, t)
    b = (batches[0][t], batches[1][t])
    z_grads.append(np.ravel(jax.grad(lambda z: head_loss(p, z, b))(represent(p, b))))
  _, _, info = mj.mtl.get("mgda").update(jnp.ones(3), jnp.asarray(np.stack(z_grads)),
                                         mj.mtl.get("mgda").init(3))
  w = np.asarray(metrics["weights"])
  np.testing.assert_allclose(w, info["weights"], rtol=1e-4, atol=1e-6)
  # The shared roles take the weighted gradient, each head its own task's, unweighted.
  g_shared, g_head = manual_grads(params, batches, loss_fn, w, np.ones(3))
  np.testing.assert_allclose(params["shared"]["w"] - new.params["shared"]["w"], g_shared,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(params["head"]["v"] - new.params["head"]["v"], g_head,
                             rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="both represent and head_loss"):
    mj.mtl.multitask_trainer(loss_fn, optax.sgd(1.0), mj.mtl.get("mgda"), num_tasks=3,
                             represent=represent)


def test_run_draws_its_batches_and_equals_the_same_steps_one_by_one():
  import optax
  params, _, loss_fn = mtl_problem()

  def sample(key):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (3, 16, 4)), jax.random.normal(ky, (3, 16))

  trainer = mj.mtl.multitask_trainer(loss_fn, optax.adam(1e-2), mj.mtl.get("famo"),
                                     num_tasks=3, sample=sample, donate=False)
  state = trainer.init(params, key=KEY)
  together, metrics = trainer.run(state, 4)
  assert metrics["task_losses"].shape == (4, 3) and metrics["loss"].shape == (4,)
  one = state
  for _ in range(4):
    one, _ = trainer.step(one)
  for a, b in zip(jax.tree.leaves(together.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_every_role_per_task_trains_independent_single_task_models():
  """per_task including "shared": T models in one step, each as if trained alone."""
  import optax
  params, batches, loss_fn = mtl_problem()
  params = {**params, "shared": {"w": jnp.stack([params["shared"]["w"]] * 3)}}
  trainer = mj.mtl.multitask_trainer(loss_fn, optax.adam(0.05), mj.mtl.get("equal"),
                                     num_tasks=3, per_task=("shared", "head"), donate=False)
  state = trainer.init(params, key=KEY)
  for _ in range(5):
    state, _ = trainer.step(state, batches)
  t = 1
  alone = trainer.task_params(params, t)
  opt = optax.adam(0.05)
  opt_state = opt.init(alone)
  for _ in range(5):
    g = jax.grad(loss_fn)(alone, (batches[0][t], batches[1][t]))
    updates, opt_state = opt.update(g, opt_state, alone)
    alone = optax.apply_updates(alone, updates)
  for a, b in zip(jax.tree.leaves(trainer.task_params(state.params, t)), jax.tree.leaves(alone)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("num_tasks", [5])  # 3 tasks: the step tests above; 2: the experiments
def test_every_method_steps_under_jit_with_any_number_of_tasks_and_traces_once(num_tasks):
  import optax
  params, batches, loss_fn = mtl_problem(num_tasks)
  traces = []

  def counted(p, b):
    traces.append(1)  # runs only while tracing
    return loss_fn(p, b)

  for name in sorted(mj.mtl.METHODS):
    hp = {"weights": [1.0] * num_tasks} if name == "fixed" else {}
    trainer = mj.mtl.multitask_trainer(counted, optax.adam(1e-2), mj.mtl.get(name, **hp),
                                       num_tasks=num_tasks)
    state = trainer.init(params, key=KEY)
    state, m1 = trainer.step(state, batches)
    after_first = len(traces)
    state, m2 = trainer.step(state, batches)
    assert len(traces) == after_first, f"{name} traced its step again"
    assert m2["weights"].shape == (num_tasks,) and np.all(np.isfinite(m2["weights"])), name
    assert np.all(np.isfinite(jax.tree.leaves(state.params)[0])), name


def test_frozen_roles_reach_the_loss_but_get_no_update_and_no_optimizer_state():
  import optax
  params, batches, loss_fn = mtl_problem()
  params = {**params, "encoder": {"scale": jnp.asarray(2.0)}}

  def scaled(p, b):
    return p["encoder"]["scale"] * loss_fn(p, b)

  for name in ("equal", "mgda"):
    trainer = mj.mtl.multitask_trainer(scaled, optax.sgd(1.0), mj.mtl.get(name), num_tasks=3,
                                       frozen=("encoder",), donate=False)
    state = trainer.init(params, key=KEY)
    new, metrics = trainer.step(state, batches)
    assert float(new.params["encoder"]["scale"]) == 2.0
    w = np.asarray(metrics["weights"])
    g_shared, _ = manual_grads(params, batches, lambda p, b: 2.0 * loss_fn(p, b), w)
    np.testing.assert_allclose(params["shared"]["w"] - new.params["shared"]["w"], g_shared,
                               rtol=1e-4, atol=1e-6)
  adam = mj.mtl.multitask_trainer(scaled, optax.adam(1e-3), mj.mtl.get("equal"), num_tasks=3,
                                  frozen=("encoder",))
  state_size = sum(a.size for a in jax.tree.leaves(adam.init(params, key=KEY).opt_state))
  trained = params["shared"]["w"].size + params["head"]["v"].size
  assert state_size == 1 + 2 * trained  # Adam's count, mu and nu: nothing for the encoder


def test_a_frozen_per_task_role_is_sliced_by_task_but_not_trained():
  import optax
  params, batches, loss_fn = mtl_problem()
  trainer = mj.mtl.multitask_trainer(loss_fn, optax.sgd(1.0), mj.mtl.get("equal"), num_tasks=3,
                                     frozen=("head",), donate=False)
  new, _ = trainer.step(trainer.init(params, key=KEY), batches)
  np.testing.assert_array_equal(new.params["head"]["v"], params["head"]["v"])
  g_shared, _ = manual_grads(params, batches, loss_fn, np.ones(3))
  np.testing.assert_allclose(params["shared"]["w"] - new.params["shared"]["w"], g_shared,
                             rtol=1e-4, atol=1e-6)


def test_heads_train_on_their_own_gradient_when_mgda_gives_their_task_no_weight():
  """LibMTL balances only the shared parameters: with MGDA's weight 0 on two tasks their
  heads still take their own task's full gradient (they froze when scaled by the weights)."""
  import optax
  params, (x, y), loss_fn = mtl_problem()
  x = x.at[0].multiply(0.001)         # task 0's shared gradient is tiny: MGDA puts all on it
  trainer = mj.mtl.multitask_trainer(loss_fn, optax.sgd(1.0), mj.mtl.get("mgda"),
                                     num_tasks=3, donate=False)
  new, metrics = trainer.step(trainer.init(params, key=KEY), (x, y))
  w = np.asarray(metrics["weights"])
  assert w[0] > 0.99 and np.all(w[1:] < 1e-3)
  g_shared, g_head = manual_grads(params, (x, y), loss_fn, w, np.ones(3))
  np.testing.assert_allclose(params["head"]["v"] - new.params["head"]["v"], g_head,
                             rtol=1e-4, atol=1e-6)
  assert np.all(np.abs(g_head[1:]) > 1e-3)


@pytest.mark.parametrize("name", ["imtl", "aligned_mtl", "mgda", "nash_mtl", "cagrad"])
def test_zero_initialised_heads_train_and_nothing_turns_nan(name):
  """Zero heads make every shared gradient zero on the first step: the balancers must give a
  zero shared update with finite weights (IMTL and Aligned-MTL gave NaN everywhere)."""
  import optax
  params, batches, loss_fn = mtl_problem()
  params = {**params, "head": {"v": jnp.zeros_like(params["head"]["v"])}}
  trainer = mj.mtl.multitask_trainer(loss_fn, optax.adam(1e-2), mj.mtl.get(name),
                                     num_tasks=3, donate=False)
  state = trainer.init(params, key=KEY)
  for _ in range(3):
    state, metrics = trainer.step(state, batches)
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves((state.params, state.extra)))
  assert not np.allclose(state.params["head"]["v"], 0.0)
  assert not np.allclose(state.params["shared"]["w"], params["shared"]["w"])

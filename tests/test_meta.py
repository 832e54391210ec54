"""The mathematics of adaptation and meta-learning, asserted against independent computations."""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtpjax as mj

SHOTS = 5


def small_problem(context_dim=0, hidden=(8,)):
  family = mj.tasks.sinusoid.family(SHOTS, SHOTS)
  prompt = mj.context_prompt(context_dim) if context_dim else None
  model = mj.compose(mj.mlp(hidden, context_dim=context_dim), mj.linear_head(1), prompt)
  params = model.init(jax.random.key(0), jnp.zeros((SHOTS, 1)))
  return family, model, params, mj.supervised(model.apply, mj.mse)


def episodes(family, n, seed=3):
  return jax.vmap(family.sample)(jax.random.split(jax.random.key(seed), n))


def first(tasks):
  return jax.tree.map(lambda a: a[0], tasks)


def test_zero_inner_steps_is_the_plain_loss_and_gradient():
  family, _, params, loss_fn = small_problem()
  ep = first(episodes(family, 1))
  learner = mj.meta_learner(loss_fn, optax.sgd(1.0), inner_steps=0)
  got, _ = learner.task_loss(params, ep)
  np.testing.assert_allclose(got, loss_fn(params, ep.query), rtol=1e-6)
  g_meta = jax.grad(lambda p: learner.task_loss(p, ep)[0])(params)
  g_plain = jax.grad(loss_fn)(params, ep.query)
  chex.assert_trees_all_close(g_meta, g_plain, rtol=1e-6)


def test_adapt_is_sgd_on_the_support_loss():
  family, _, params, loss_fn = small_problem()
  ep = first(episodes(family, 1))
  adapted, aux = mj.adapt(loss_fn, params, ep.support, fast=("shared", "head"), steps=2, lr=0.05)
  p = params
  for _ in range(2):
    g = jax.grad(loss_fn)(p, ep.support)
    p = jax.tree.map(lambda a, b: a - 0.05 * b, p, g)
  chex.assert_trees_all_close(adapted, p, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(aux["support_loss"][0], loss_fn(params, ep.support), rtol=1e-6)


@pytest.mark.parametrize("unroll", [1, 2, True])
@pytest.mark.parametrize("remat", [False, True])
def test_unroll_and_remat_do_not_change_the_meta_gradient(unroll, remat):
  family, _, params, loss_fn = small_problem()
  ep = first(episodes(family, 1))
  ref = mj.meta_learner(loss_fn, optax.sgd(1.0), inner_steps=3, inner_lr=0.05, unroll=1)
  alt = mj.meta_learner(loss_fn, optax.sgd(1.0), inner_steps=3, inner_lr=0.05, unroll=unroll,
                        remat=remat)
  g_ref = jax.grad(lambda p: ref.task_loss(p, ep)[0])(params)
  g_alt = jax.grad(lambda p: alt.task_loss(p, ep)[0])(params)
  chex.assert_trees_all_close(g_alt, g_ref, rtol=1e-5, atol=1e-6)


def test_first_order_meta_gradient_is_query_gradient_at_adapted_params():
  family, _, params, loss_fn = small_problem()
  ep = first(episodes(family, 1))
  learner = mj.meta_learner(loss_fn, optax.sgd(1.0), algorithm="fomaml", inner_steps=3,
                            inner_lr=0.05)
  g_fo = jax.grad(lambda p: learner.task_loss(p, ep)[0])(params)
  adapted, _ = learner.adapt(params, ep.support)
  g_query = jax.grad(loss_fn)(adapted, ep.query)
  chex.assert_trees_all_close(g_fo, g_query, rtol=1e-5, atol=1e-7)
  # ... and it is not the second-order gradient (the test would be vacuous otherwise).
  so = mj.meta_learner(loss_fn, optax.sgd(1.0), algorithm="maml", inner_steps=3, inner_lr=0.05)
  g_so = jax.grad(lambda p: so.task_loss(p, ep)[0])(params)
  assert not np.allclose(g_so["shared"]["dense_0"]["kernel"], g_fo["shared"]["dense_0"]["kernel"],
                         rtol=1e-3)


def test_second_order_meta_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    family, _, params, loss_fn = small_problem(hidden=(6,))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    ep = jax.tree.map(lambda a: a.astype(jnp.float64), first(episodes(family, 1)))
    learner = mj.meta_learner(loss_fn, optax.sgd(1.0), algorithm="maml", inner_steps=2,
                              inner_lr=0.05)
    f = lambda p: learner.task_loss(p, ep)[0]
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    g = jax.flatten_util.ravel_pytree(jax.grad(f)(params))[0]
    eps = 1e-6
    rng = np.random.default_rng(0)
    for _ in range(6):  # random directions: <g, d> against the central difference
      d = rng.standard_normal(flat.shape)
      fd = (f(unravel(flat + eps * d)) - f(unravel(flat - eps * d))) / (2 * eps)
      np.testing.assert_allclose(float(jnp.dot(g, d)), float(fd), rtol=1e-5, atol=1e-8)


def test_vmapped_meta_batch_equals_a_loop_over_tasks():
  family, _, params, loss_fn = small_problem()
  tasks = episodes(family, 4)
  learner = mj.meta_learner(loss_fn, optax.sgd(0.1), inner_steps=2, inner_lr=0.05)
  state = learner.init(params, key=jax.random.key(0))
  new_state, metrics = learner.step(state, tasks)
  grads = [jax.grad(lambda p: learner.task_loss(p, first(jax.tree.map(lambda a: a[i:i + 1], tasks)))[0])(params)
           for i in range(4)]
  mean_grad = jax.tree.map(lambda *g: sum(g) / 4, *grads)
  expected = jax.tree.map(lambda p, g: p - 0.1 * g, params, mean_grad)
  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-6)
  losses = [learner.task_loss(params, first(jax.tree.map(lambda a: a[i:i + 1], tasks)))[0]
            for i in range(4)]
  np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=1e-5)


def test_reptile_on_a_quadratic_matches_its_closed_form():
  # loss_i(theta) = 0.5 |theta - c_i|^2. k SGD steps of size a give
  # theta_k = c_i + (1 - a)^k (theta - c_i), so Reptile with outer SGD(eps) moves to
  # theta - eps (1 - (1 - a)^k) (theta - mean_i c_i).
  k, a, eps = 3, 0.3, 0.5
  centres = jnp.array([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]])  # [tasks, dim]
  tasks = mj.Episode(mj.Batch(centres[:, None], centres[:, None]),
                     mj.Batch(centres[:, None], centres[:, None]))
  loss_fn = lambda p, b: 0.5 * jnp.sum(jnp.square(p["shared"] - b.y[0]))
  theta = jnp.array([0.5, 0.25])
  learner = mj.meta_learner(loss_fn, optax.sgd(eps), algorithm="reptile", inner_steps=k,
                            inner_lr=a, meta_batch_size=3)
  state = learner.init({"shared": theta}, key=jax.random.key(0))
  state, _ = learner.step(state, tasks)
  expected = theta - eps * (1 - (1 - a) ** k) * (theta - centres.mean(0))
  np.testing.assert_allclose(state.params["shared"], expected, rtol=1e-6)


def test_reptile_leaves_a_unit_dead_on_every_task_exactly_where_it_is():
  # A hidden ReLU unit with a large negative bias is dead for every input, so no task moves
  # its weights: Reptile's direction there must be exactly zero, or Adam's first step (which
  # divides by sqrt(v) + eps) turns float32 rounding noise into a move of up to lr.
  family, _, params, loss_fn = small_problem(hidden=(8,))
  params = jax.tree.map(jnp.copy, params)
  dense = params["shared"]["dense_0"]
  dense["bias"] = dense["bias"].at[3].set(-100.0)
  dense["kernel"] = dense["kernel"].at[:, 3].set(0.731)
  learner = mj.meta_learner(loss_fn, optax.adam(0.1), algorithm="reptile", inner_steps=5,
                            inner_lr=0.37, meta_batch_size=7, sample=family.sample)
  state = learner.init(params, key=jax.random.key(0))
  for _ in range(3):
    state, _ = learner.step(state)
  after = state.params["shared"]["dense_0"]
  assert after["bias"][3] == -100.0 and after["kernel"][0, 3] == np.float32(0.731)
  assert not np.array_equal(after["bias"], dense["bias"])  # the live units did move


def test_meta_sgd_learning_rates_receive_the_right_gradient():
  family, _, params, loss_fn = small_problem()
  ep = first(episodes(family, 1))
  learner = mj.meta_learner(loss_fn, optax.sgd(1.0), algorithm="metasgd", inner_steps=1,
                            inner_lr=0.05)
  state = learner.init(params, key=jax.random.key(0))
  p = state.params
  chex.assert_trees_all_equal_structs(p["inner_lr"], {"shared": p["shared"], "head": p["head"]})
  g = jax.grad(lambda q: learner.task_loss(q, ep)[0])(p)["inner_lr"]
  # One step: d L_q(theta - alpha * g_s) / d alpha = -g_q(adapted) * g_s, elementwise.
  g_s = jax.grad(loss_fn)(p, ep.support)
  adapted, _ = learner.adapt(p, ep.support)
  g_q = jax.grad(loss_fn)(adapted, ep.query)
  expected = jax.tree.map(lambda a, b: -a * b, {r: g_q[r] for r in ("shared", "head")},
                          {r: g_s[r] for r in ("shared", "head")})
  chex.assert_trees_all_close(g, expected, rtol=1e-5, atol=1e-8)
  assert float(optax.tree.norm(g)) > 0
  # And the outer step moves them.
  new_state, _ = learner.step(state, jax.tree.map(lambda a: a[None], ep))
  assert not np.allclose(new_state.params["inner_lr"]["head"]["kernel"], 0.05)


def test_prompt_only_adaptation_leaves_shared_and_head_untouched():
  family, _, params, loss_fn = small_problem(context_dim=3)
  ep = first(episodes(family, 1))
  learner = mj.meta_learner(loss_fn, optax.sgd(1.0), algorithm="cavia", inner_steps=3,
                            inner_lr=1.0)
  adapted, _ = learner.adapt(params, ep.support)
  chex.assert_trees_all_equal(adapted["shared"], params["shared"])
  chex.assert_trees_all_equal(adapted["head"], params["head"])
  assert not np.allclose(adapted["prompt"], params["prompt"])
  # CAVIA's context restarts from zero for every task: the outer step leaves it at zero
  # while the shared network does move.
  state = learner.init(params, key=jax.random.key(0))
  state, _ = learner.step(state, episodes(family, 2))
  np.testing.assert_array_equal(state.params["prompt"], np.zeros(3))
  assert not np.allclose(state.params["shared"]["dense_0"]["kernel"],
                         params["shared"]["dense_0"]["kernel"])


def test_anil_adapts_only_the_head():
  family, _, params, loss_fn = small_problem()
  ep = first(episodes(family, 1))
  learner = mj.meta_learner(loss_fn, optax.sgd(1.0), algorithm="anil", inner_steps=2,
                            inner_lr=0.1)
  adapted, _ = learner.adapt(params, ep.support)
  chex.assert_trees_all_equal(adapted["shared"], params["shared"])
  assert not np.allclose(adapted["head"]["kernel"], params["head"]["kernel"])


def test_frozen_roles_get_no_update_and_no_optimizer_state():
  family, _, params, loss_fn = small_problem(context_dim=2)
  algo = mj.get_algorithm("maml", fast=("prompt",), outer=("prompt", "head"))
  learner = mj.meta_learner(loss_fn, optax.adam(1e-2), algorithm=algo, inner_steps=1,
                            inner_lr=0.5)
  state = learner.init(params, key=jax.random.key(0))
  leaves = jax.tree.leaves(state.opt_state)
  n_outer = sum(x.size for r in ("prompt", "head") for x in jax.tree.leaves(params[r]))
  assert sum(x.size for x in leaves if x.ndim > 0) == 2 * n_outer  # Adam's mu and nu only
  for _ in range(3):
    state, _ = learner.step(state, episodes(family, 2))
  chex.assert_trees_all_equal(state.params["shared"], params["shared"])
  assert not np.allclose(state.params["head"]["kernel"], params["head"]["kernel"])


def test_jit_and_no_jit_steps_agree():
  family, _, params, loss_fn = small_problem()
  out = []
  for jit in (True, False):
    learner = mj.meta_learner(loss_fn, optax.adam(1e-2), inner_steps=1, inner_lr=0.05,
                              meta_batch_size=3, sample=family.sample, jit=jit)
    state = learner.init(params, key=jax.random.key(7))
    for _ in range(2):
      state, _ = learner.step(state)
    out.append(state.params)
  chex.assert_trees_all_close(out[0], out[1], rtol=1e-5, atol=1e-6)


def test_run_is_the_same_as_that_many_steps_with_metrics_stacked():
  family, _, params, loss_fn = small_problem()
  learner = mj.meta_learner(loss_fn, optax.adam(1e-2), inner_steps=1, inner_lr=0.05,
                            meta_batch_size=3, sample=family.sample)
  state = learner.init(params, key=jax.random.key(7))
  losses = []
  for _ in range(3):
    state, metrics = learner.step(state)
    losses.append(metrics["loss"])
  scanned, stacked = learner.run(learner.init(params, key=jax.random.key(7)), 3)
  assert int(scanned.step) == 3 and stacked["loss"].shape == (3,)
  assert len(set(np.asarray(losses).tolist())) == 3  # each step drew its own tasks
  np.testing.assert_allclose(stacked["loss"], losses, rtol=1e-5)
  chex.assert_trees_all_close(scanned.params, state.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(scanned.opt_state, state.opt_state, rtol=1e-5, atol=1e-6)
  one, metrics = learner.run(learner.init(params, key=jax.random.key(7)), 1)  # step's program
  assert int(one.step) == 1 and metrics["loss"].shape == (1,)
  np.testing.assert_allclose(metrics["loss"][0], losses[0], rtol=1e-5)
  for bad in (0, -1, 2.0, True):
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
      learner.run(scanned, bad)
  no_sampler = mj.meta_learner(loss_fn, optax.adam(1e-2), meta_batch_size=3)
  with pytest.raises(ValueError, match="samples its own batches"):
    no_sampler.run(no_sampler.init(params, key=jax.random.key(0)), 2)


def test_the_jitted_meta_step_traces_once_over_many_steps():
  family, _, params, loss_fn = small_problem()
  traces = []

  def counting_sample(key):
    traces.append(1)
    return family.sample(key)

  learner = mj.meta_learner(loss_fn, optax.adam(1e-3), meta_batch_size=4,
                            sample=counting_sample)
  state = learner.init(params, key=jax.random.key(0))
  traces.clear()  # construction traces it once to check shapes
  for _ in range(20):
    state, metrics = learner.step(state)
  assert len(traces) == 1
  assert int(state.step) == 20


def test_reset_head_starts_every_task_at_zero_and_one_step_is_the_closed_form():
  # Zeroing trick (Kao et al. 2022): from W = 0, b = 0 the softmax is uniform, so one SGD step
  # of the mean cross-entropy gives W' = lr/n * sum_i (onehot(y_i) - 1/K) f_i^T and
  # b' = lr/n * sum_i (onehot(y_i) - 1/K), whatever the meta-learned features are.
  ways, n, lr = 3, 6, 0.7
  model = mj.compose(mj.mlp((8,)), mj.linear_head(ways))
  params = model.init(jax.random.key(0), jnp.zeros((n, 2)))
  x = jax.random.normal(jax.random.key(1), (2, n, 2))
  y = jnp.tile(jnp.arange(ways), (2, n // ways))
  tasks = mj.Episode(mj.Batch(x, y), mj.Batch(x + 0.1, y))
  loss_fn = mj.supervised(model.apply, mj.cross_entropy)
  algo = mj.get_algorithm("fomaml", reset=("head",))
  learner = mj.meta_learner(loss_fn, optax.sgd(0.5), algorithm=algo, inner_steps=1,
                            inner_lr=lr)
  state = learner.init(params, key=jax.random.key(0))
  chex.assert_trees_all_equal(state.params["head"], jax.tree.map(jnp.zeros_like, params["head"]))
  state, _ = learner.step(state, tasks)
  chex.assert_trees_all_equal(state.params["head"], jax.tree.map(jnp.zeros_like, params["head"]))
  assert not np.allclose(state.params["shared"]["dense_0"]["kernel"],
                         params["shared"]["dense_0"]["kernel"])  # the features are meta-learned
  ep = first(tasks)
  adapted, _ = learner.adapt(state.params, ep.support)
  feats = mj.mlp((8,)).apply(state.params["shared"], ep.support.x)
  coef = jax.nn.one_hot(ep.support.y, ways) - 1.0 / ways  # [n, K]
  np.testing.assert_allclose(adapted["head"]["kernel"], lr / n * feats.T @ coef, rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(adapted["head"]["bias"], lr / n * coef.sum(0), rtol=1e-5, atol=1e-7)


def test_reset_roles_are_checked():
  with pytest.raises(ValueError, match="must adapt"):
    mj.get_algorithm("cavia", reset=("head",))
  with pytest.raises(ValueError, match="subset"):
    mj.get_algorithm("maml", reset=("bogus",))
  family, _, params, loss_fn = small_problem()
  algo = mj.get_algorithm("maml", outer=("head",), reset=("head",))
  learner = mj.meta_learner(loss_fn, optax.sgd(0.1), algorithm=algo, inner_steps=1)
  with pytest.raises(ValueError, match="meta-learns nothing"):
    learner.init(params, key=jax.random.key(0))


def test_a_samplers_table_is_an_argument_of_the_compiled_step_not_a_constant(monkeypatch):
  # Closed over, a sampler's table would be baked into every executable (a copy each, and
  # constant folding at compile time); hoisted, the step reads it as an argument.
  from mtpjax._src import hoist, trainer as trainer_lib
  table = np.random.default_rng(0).normal(size=(300, 64)).astype(np.float32)
  family = mj.tasks.text.episodes(np.zeros((300, 1), np.int32), np.arange(300) % 10, ways=5,
                                  shots=1, queries=1, features={"h": table})
  constant = "stablehlo.constant dense<"
  shape = "tensor<300x64xf32>"

  def baked(text):
    return any(constant in line and shape in line for line in text.splitlines())

  key = jax.random.key(0)
  data, draw = hoist.hoist(family.sample)
  assert baked(jax.jit(family.sample).lower(key).as_text())  # the check can fail
  assert not baked(jax.jit(draw).lower(data, key).as_text())
  assert bool(jnp.all(draw(data, key).query.x["h"] == family.sample(key).query.x["h"]))

  seen = {}
  real = trainer_lib.compile_step

  def spy(step, **kw):
    seen.update(step=step, data=kw["data"])
    return real(step, **kw)

  monkeypatch.setattr(trainer_lib, "compile_step", spy)
  head = mj.linear_head(5)
  loss = lambda p, batch: mj.cross_entropy(head.apply(p[mj.HEAD], batch[0]["h"]), batch[1])
  learner = mj.meta_learner(loss, optax.adam(1e-3), inner_steps=1, inner_lr=0.1,
                            meta_batch_size=2, sample=family.sample)
  params = {mj.HEAD: head.init(key, jnp.zeros((1, 64)))}
  state = learner.init(params, key=key)
  assert any(a.shape == table.shape for a in seen["data"])
  text = jax.jit(seen["step"]).lower(state, None, seen["data"]).as_text()
  assert "gather" in text and not baked(text)
  state, metrics = learner.run(state, 2)
  assert np.isfinite(float(metrics["loss"][-1]))

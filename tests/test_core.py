"""Nets, prompts, losses, evaluation and input validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtpjax as mj


def test_mlp_matches_a_hand_computation():
  net = mj.mlp((3, 2))
  x = jax.random.normal(jax.random.key(1), (4, 5))
  p = net.init(jax.random.key(0), x)
  h = jax.nn.relu(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"][None])
  h = jax.nn.relu(h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"][None])
  np.testing.assert_allclose(net.apply(p, x), h, rtol=1e-6)


@pytest.mark.parametrize("mode", ["add", "film"])
def test_zero_context_is_the_unconditioned_network_for_add_and_film(mode):
  x = jax.random.normal(jax.random.key(1), (4, 2))
  plain = mj.mlp((6, 6))
  net = mj.mlp((6, 6), context_dim=3, context_mode=mode, context_layer=1)
  p = net.init(jax.random.key(0), x)
  p_plain = {k: v for k, v in p.items() if k.startswith("dense_")}
  if mode == "film":  # zero context gives gamma = beta = film bias: zero them for identity
    p = {**p, "film": {**p["film"], "bias": jnp.zeros_like(p["film"]["bias"])}}
  np.testing.assert_allclose(net.apply(p, x, jnp.zeros(3)), plain.apply(p_plain, x), rtol=1e-6)
  assert not np.allclose(net.apply(p, x, jnp.ones(3)), plain.apply(p_plain, x))


def test_concat_context_is_a_bias_on_the_first_layer():
  x = jax.random.normal(jax.random.key(1), (4, 2))
  ctx = jnp.array([0.5, -1.0])
  net = mj.mlp((5,), context_dim=2, context_mode="concat")
  p = net.init(jax.random.key(0), x)
  k = p["dense_0"]["kernel"]  # [2 + 2, 5]
  expected = jax.nn.relu(x @ k[:2] + (ctx @ k[2:] + p["dense_0"]["bias"])[None])
  np.testing.assert_allclose(net.apply(p, x, ctx), expected, rtol=1e-6)


def test_compose_roles_and_prompt_init():
  model = mj.compose(mj.mlp((4,), context_dim=3), mj.linear_head(2), mj.context_prompt(3))
  p = model.init(jax.random.key(0), jnp.zeros((7, 1)))
  assert set(p) == {"shared", "head", "prompt"}
  np.testing.assert_array_equal(p["prompt"], np.zeros(3))  # CAVIA: zero context
  assert model.apply(p, jnp.ones((7, 1))).shape == (7, 2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(features=()), "features"), (dict(features=(4, 0)), "features"),
    (dict(features=(4,), context_mode="mul"), "context_mode"),
    (dict(features=(4,), context_dim=2, context_layer=3), "context_layer"),
    (dict(features=(4,), kernel_init="xavier"), "kernel_init"),
])
def test_mlp_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mj.mlp(**kwargs)


def test_losses():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
  labels = jnp.array([0, 2])
  logp = jax.nn.log_softmax(logits)
  ce = -(logp[0, 0] + logp[1, 2]) / 2
  np.testing.assert_allclose(mj.cross_entropy(logits, labels), ce, rtol=1e-6)
  w = jnp.array([1.0, 1.0, 3.0])
  wce = -(1.0 * logp[0, 0] + 3.0 * logp[1, 2]) / 4.0
  np.testing.assert_allclose(mj.weighted_cross_entropy(logits, labels, w), wce, rtol=1e-6)
  np.testing.assert_allclose(mj.weighted_cross_entropy(logits, labels, jnp.ones(3)), ce, rtol=1e-6)
  np.testing.assert_allclose(mj.accuracy(logits, labels), 0.5)
  np.testing.assert_allclose(mj.mse(jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0])), 5.0)


@pytest.mark.parametrize("bad", [-1, 3])
@pytest.mark.parametrize("fn", [mj.cross_entropy, mj.accuracy,
                                lambda lo, la: mj.weighted_cross_entropy(lo, la, jnp.ones(3))])
def test_invalid_labels_raise_eagerly_and_are_nan_under_jit(fn, bad):
  # optax reads -1 as the last class (a finite, wrong 1.0986 for 3 equal logits) and 3 as NaN
  # or garbage: the loss must make a bad label impossible to miss.
  logits = jnp.zeros((2, 3))
  labels = jnp.array([0, bad])
  with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
    fn(logits, labels)
  assert np.isnan(jax.jit(fn)(logits, labels))
  assert np.isfinite(jax.jit(fn)(logits, jnp.array([0, 2])))


def test_mean_ci95():
  v = np.array([1.0, 2.0, 3.0, 4.0])
  mean, ci = mj.mean_ci95(v)
  assert mean == 2.5
  assert math.isclose(ci, 1.96 * np.std(v, ddof=1) / 2.0)
  with pytest.warns(UserWarning, match="one value has no confidence interval"):
    mean, ci = mj.mean_ci95([0.7])
  assert mean == 0.7 and math.isnan(ci)   # not a reassuring 0.0


def _learner(algorithm="maml", **kw):
  family = mj.tasks.sinusoid.family(5, 20)
  model = mj.compose(mj.mlp((8,)), mj.linear_head(1))
  params = model.init(jax.random.key(0), jnp.zeros((5, 1)))
  loss_fn = mj.supervised(model.apply, mj.mse)
  return family, params, mj.meta_learner(loss_fn, optax.adam(1e-3), algorithm=algorithm,
                                         inner_lr=0.05, **kw)


def test_evaluate_records_the_query_loss_after_each_step_count():
  family, params, learner = _learner()
  key = jax.random.key(5)
  res = mj.evaluate(learner, params, family.sample, key=key, num_tasks=7, inner_steps=(0, 1, 4),
                    batch_size=3)
  assert res.per_task["loss"].shape == (7, 5)
  # Recompute task 5 by hand: task i comes from split(key, num_tasks)[i].
  ep = family.sample(jax.random.split(key, 7)[5])
  for steps in (0, 1, 4):
    adapted, _ = learner.adapt(params, ep.support, steps=steps)
    np.testing.assert_allclose(res.per_task["loss"][5, steps],
                               learner.loss_fn(adapted, ep.query), rtol=1e-5)
  mean, ci = res.summary()["loss"][4]
  assert (mean, ci) == mj.mean_ci95(res.per_task["loss"][:, 4])
  # The tasks do not depend on how they are batched.
  other = mj.evaluate(learner, params, family.sample, key=key, num_tasks=7, inner_steps=(0, 1, 4),
                      batch_size=7)
  np.testing.assert_allclose(other.per_task["loss"], res.per_task["loss"], rtol=1e-5)


def test_evaluate_at_the_listed_counts_only_equals_the_full_trajectory():
  family, params, learner = _learner()
  key = jax.random.key(5)
  full = mj.evaluate(learner, params, family.sample, key=key, num_tasks=6, inner_steps=(0, 2, 5))
  at = mj.evaluate(learner, params, family.sample, key=key, num_tasks=6, inner_steps=(0, 2, 5),
                   every_step=False)
  assert at.per_task["loss"].shape == (6, 3) and at.steps() == (0, 2, 5)
  for s in (0, 2, 5):
    np.testing.assert_allclose(at.column("loss", s), full.column("loss", s), rtol=2e-5)
  assert at.summary()["loss"][5] == pytest.approx(full.summary()["loss"][5], rel=2e-5)
  with pytest.raises(ValueError, match="were not measured"):
    at.column("loss", 1)


def test_evaluator_compiles_once_across_calls():
  family, params, learner = _learner()
  traces = []

  def sample(key):
    traces.append(1)
    return family.sample(key)

  evaluator = mj.make_evaluator(learner, sample, max_steps=2, batch_size=4)
  a = evaluator(params, jax.random.key(0), 8)
  params2 = jax.tree.map(lambda x: x + 0.1, params)
  b = evaluator(params2, jax.random.key(0), 8)
  assert len(traces) == 1
  assert not np.allclose(a["loss"], b["loss"])


def test_split_episode_is_disjoint_and_validates():
  x = jnp.arange(10.0)[:, None]
  ep = mj.split_episode(jax.random.key(0), x, 2 * x, shots=3, queries=4)
  s, q = set(np.asarray(ep.support.x[:, 0])), set(np.asarray(ep.query.x[:, 0]))
  assert len(s) == 3 and len(q) == 4 and not s & q
  np.testing.assert_array_equal(ep.support.y, 2 * ep.support.x)
  with pytest.raises(ValueError, match="exceeds the 10 available points"):
    mj.split_episode(jax.random.key(0), x, x, shots=6, queries=5)
  with pytest.raises(ValueError, match="x has 10 examples but y has 9"):
    mj.split_episode(jax.random.key(0), x, x[:9], shots=2, queries=2)


def test_bad_meta_learner_arguments_fail_before_compiling():
  loss_fn = lambda p, b: jnp.mean(b.y) * jnp.sum(p["shared"])
  opt = optax.sgd(0.1)
  with pytest.raises(ValueError, match="unknown algorithm 'mamll'"):
    mj.meta_learner(loss_fn, opt, algorithm="mamll")
  for kw, match in [(dict(inner_steps=-1), "inner_steps"), (dict(inner_lr=0.0), "inner_lr"),
                    (dict(inner_lr=float("nan")), "inner_lr"),
                    (dict(meta_batch_size=0), "meta_batch_size")]:
    with pytest.raises(ValueError, match=match):
      mj.meta_learner(loss_fn, opt, **kw)
  with pytest.raises(ValueError, match="reptile needs inner_steps >= 1"):
    mj.meta_learner(loss_fn, opt, algorithm="reptile", inner_steps=0)
  with pytest.raises(ValueError, match="fast roles"):
    mj.get_algorithm("maml", fast=("backbone",))


def test_support_and_query_shapes_that_disagree_are_rejected():
  def bad_sample(key):
    return mj.Episode(mj.Batch(jnp.zeros((5, 1)), jnp.zeros((5, 1))),
                      mj.Batch(jnp.zeros((5, 2)), jnp.zeros((5, 1))))

  loss_fn = lambda p, b: jnp.mean(b.y)
  with pytest.raises(ValueError, match=r"support.x \(5, 1\).*query.x \(5, 2\)"):
    mj.meta_learner(loss_fn, optax.sgd(0.1), sample=bad_sample)
  learner = mj.meta_learner(loss_fn, optax.sgd(0.1))
  state = learner.init({"shared": jnp.zeros(1)}, key=jax.random.key(0))
  tasks = mj.Episode(mj.Batch(jnp.zeros((2, 5, 1)), jnp.zeros((2, 4, 1))),
                     mj.Batch(jnp.zeros((2, 5, 1)), jnp.zeros((2, 5, 1))))
  with pytest.raises(ValueError, match="same number of examples"):
    learner.step(state, tasks)


def test_algorithm_roles_missing_from_the_params_are_an_error():
  _, params, learner = _learner("cavia")
  with pytest.raises(ValueError, match=r"roles \['prompt'\] are not in the parameters"):
    learner.init(params, key=jax.random.key(0))


def test_sinusoid_family():
  fam = mj.tasks.sinusoid.family(4, 6)
  ep = fam.sample(jax.random.key(0))
  amp, phase = fam.task_params(jax.random.split(jax.random.key(0))[0])
  np.testing.assert_allclose(ep.query.y, amp * jnp.sin(ep.query.x - phase), rtol=1e-5, atol=1e-6)
  assert 0.1 <= float(amp) <= 5.0 and 0.0 <= float(phase) <= math.pi
  with pytest.raises(ValueError, match="shots and queries must be positive"):
    mj.tasks.sinusoid.family(0, 5)
  with pytest.raises(ValueError, match="amp_range"):
    mj.tasks.sinusoid.family(5, 5, amp_range=(2.0, 1.0))


@pytest.mark.parametrize("norm", ["group", "layer", "none"])
def test_conv4_features_of_an_example_do_not_depend_on_the_rest_of_the_batch(norm):
  net = mj.conv4(filters=32, norm=norm)
  x = jax.random.uniform(jax.random.key(0), (5, 28, 28))
  p = net.init(jax.random.key(1), x)
  apply = jax.jit(net.apply)
  out = apply(p, x)
  assert out.shape == (5, 32) and net.out_dim == 32
  np.testing.assert_allclose(apply(p, x[2:3]), out[2:3], rtol=1e-5, atol=1e-5)


def test_conv4_transductive_batch_norm_is_explicitly_transductive():
  net = mj.conv4(filters=32, norm="batch_transductive")
  x = jax.random.uniform(jax.random.key(0), (5, 28, 28))
  p = net.init(jax.random.key(1), x)
  out = jax.jit(net.apply)(p, x)
  assert not np.allclose(jax.jit(net.apply)(p, x[:2])[:1], out[:1], atol=1e-4)


def test_conv4_film_context():
  net = mj.conv4(filters=32, context_dim=4, context_layer=1)
  x = jax.random.uniform(jax.random.key(0), (3, 28, 28))
  p = net.init(jax.random.key(1), x)
  plain = mj.conv4(filters=32)
  p_plain = {k: v for k, v in p.items() if k != "film"}
  p_zero = {**p, "film": {**p["film"], "bias": jnp.zeros_like(p["film"]["bias"])}}
  np.testing.assert_allclose(net.apply(p_zero, x, jnp.zeros(4)), plain.apply(p_plain, x),
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(net.apply(p_zero, x, jnp.ones(4)), plain.apply(p_plain, x))
  with pytest.raises(ValueError, match="norm must be one of"):
    mj.conv4(norm="batch")


@pytest.mark.parametrize("impl", ["im2col", "taps"])
def test_conv3x3_implementations_agree_with_xla_in_value_gradient_and_under_vmap(impl):
  from mtpjax.nn import _conv4 as nets
  x = jax.random.normal(jax.random.key(0), (3, 2, 7, 6, 4))     # [tasks, n, H, W, C]
  k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4, 5))      # per-task kernels
  ref = lambda x, k: nets.conv3x3(x, k, "xla")
  new = lambda x, k: nets.conv3x3(x, k, impl)
  np.testing.assert_allclose(jax.vmap(new)(x, k), jax.vmap(ref)(x, k), rtol=1e-4, atol=1e-4)
  loss = lambda f: (lambda x, k: jnp.sum(jnp.sin(jax.vmap(f)(x, k))))
  for a, b in zip(jax.grad(loss(new), (0, 1))(x, k), jax.grad(loss(ref), (0, 1))(x, k)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="impl must be one of"):
    nets.conv3x3(x[0], k[0], "fft")


def test_conv3x3_auto_uses_im2col_where_it_was_measured_faster():
  # Notes rows 13 and 36: im2col beat XLA's grouped convolutions by ~18x on the CPU and 4.8x on an
  # H100 in Omniglot MAML's meta-step; TPUs keep XLA's convolution (not measured).
  from mtpjax.nn import _conv4 as nets
  assert [nets.auto_conv_impl(b) for b in ("cpu", "gpu", "cuda", "tpu")] == [
      "im2col", "im2col", "im2col", "xla"]
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
  k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  jaxpr = str(jax.make_jaxpr(lambda x, k: nets.conv3x3(x, k, "auto"))(x, k))
  uses_conv = "conv_general_dilated" in jaxpr
  assert uses_conv == (nets.auto_conv_impl(jax.default_backend()) == "xla")


def test_max_pool_matches_flax_and_its_gradient_picks_one_element_per_window_even_on_ties():
  import flax.linen as nn
  from mtpjax.nn import _conv4 as nets
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
  np.testing.assert_array_equal(nets.max_pool_2x2(x),
                                nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID"))
  # Windows where every element ties (a GroupNorm'd blank image region): a reshape + max
  # splits the gradient by testing x == max(x), which under jit gave NaN meta-gradients.
  tied = jnp.zeros((1, 4, 4, 2)).at[:, :2, :2, 0].set(1.0)
  for fn in (jax.grad(lambda x: jnp.sum(nets.max_pool_2x2(x))),
             jax.jit(jax.grad(lambda x: jnp.sum(nets.max_pool_2x2(x))))):
    g = fn(tied)
    assert bool(jnp.all(jnp.isfinite(g)))
    windows = g.reshape(1, 2, 2, 2, 2, 2).sum(axis=(2, 4))
    np.testing.assert_array_equal(windows, jnp.ones_like(windows))  # exactly one winner each
    assert set(np.unique(np.asarray(g)).tolist()) <= {0.0, 1.0}


def test_group_norm_matches_flax_group_norm():
  import flax.linen as nn
  from mtpjax.nn import _conv4 as nets
  x = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 6, 8)) + 1.0
  scale = jax.random.normal(jax.random.key(1), (8,))
  bias = jax.random.normal(jax.random.key(2), (8,))
  ref = nn.GroupNorm(num_groups=4, epsilon=1e-5)
  want = ref.apply({"params": {"scale": scale, "bias": bias}}, x)
  mult, shift = nets.group_norm_coefficients(x, scale, bias, 4)
  np.testing.assert_allclose(x * mult[:, None, None] + shift[:, None, None], want,
                             rtol=1e-4, atol=1e-4)


def test_affine_max_pool_is_the_pool_of_the_affine_map_at_first_and_second_order():
  from mtpjax.nn import _conv4 as nets
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 4), jnp.float64)
    x = x.at[:, :4, :4, :].set(0.3)       # tied windows: one winner each, in both forms
    mult = jnp.array([[1.5, -0.5, 0.25, -2.0], [0.2, 1.0, -1.0, 3.0]], jnp.float64)
    shift = jnp.arange(8.0, dtype=jnp.float64).reshape(2, 4) / 8
    fused = lambda x, m, b: nets.affine_max_pool_2x2(x, m, b)
    plain = lambda x, m, b: nets.max_pool_2x2(x * m[:, None, None] + b[:, None, None])
    np.testing.assert_allclose(fused(x, mult, shift), plain(x, mult, shift), rtol=1e-12)
    for f in (fused, plain):
      assert f(x, mult, shift).shape == (2, 3, 3, 4)

    def second_order(f):
      first = jax.grad(lambda *a: jnp.sum(jnp.sin(jax.nn.relu(f(*a)))), (0, 1, 2))
      return jax.grad(lambda *a: sum(jnp.sum(jnp.cos(g)) for g in first(*a)), (0, 1, 2))

    for order in (lambda f: jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), (0, 1, 2)),
                  second_order):
      for a, b in zip(jax.jit(order(fused))(x, mult, shift),
                      jax.jit(order(plain))(x, mult, shift)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", ["group", "layer", "batch_transductive", "none"])
def test_conv4_is_conv_norm_film_relu_maxpool_with_and_without_a_context(norm):
  import flax.linen as nn
  from mtpjax.nn import _conv4 as nets
  x = jax.random.uniform(jax.random.key(0), (3, 16, 16))
  context = jax.random.normal(jax.random.key(1), (5,))

  def normalise(h, i, params):  # each norm as written by flax or by hand, at full resolution
    if norm == "group":
      return nn.GroupNorm(num_groups=4, epsilon=1e-5).apply({"params": params[f"norm_{i}"]}, h)
    if norm == "layer":
      return nn.LayerNorm(reduction_axes=(-3, -2, -1)).apply({"params": params[f"norm_{i}"]}, h)
    if norm == "batch_transductive":
      h = (h - h.mean(axis=(0, 1, 2))[None, None, None]) / jnp.sqrt(
          h.var(axis=(0, 1, 2))[None, None, None] + 1e-5)
      return (h * params[f"norm_{i}_scale"][None, None, None]
              + params[f"norm_{i}_bias"][None, None, None])
    return h

  for context_layer in (0, 2):
    net = mj.conv4(filters=8, groups=4, context_dim=5, context_layer=context_layer,
                   image_size=16, norm=norm)
    params = net.init(jax.random.key(2), x)
    # FiLM weights large enough that 1 + gamma is negative for some channels
    params["film"] = jax.tree.map(lambda a: 3.0 * jax.random.normal(jax.random.key(3), a.shape),
                                  params["film"])
    gamma, beta = jnp.split(context @ params["film"]["kernel"] + params["film"]["bias"], 2)
    assert bool(jnp.any(1.0 + gamma < 0))
    for ctx in (context, None):
      h = x[..., None]
      for i in range(4):
        conv = params[f"conv_{i}"]
        h = nets.conv3x3(h, conv["kernel"], "xla") + conv["bias"][None, None, None]
        h = normalise(h, i, params)
        if ctx is not None and i == context_layer:
          h = h * (1.0 + gamma)[None, None, None] + beta[None, None, None]
        h = nn.max_pool(nn.relu(h), (2, 2), strides=(2, 2))
      np.testing.assert_allclose(net.apply(params, x, ctx), h.reshape(3, -1),
                                 rtol=1e-4, atol=1e-5)


def test_conv4_meta_gradient_is_the_same_for_every_conv_implementation():
  data = jax.random.uniform(jax.random.key(0), (8, 4, 16, 16))
  family = mj.tasks.classification.episodes(data, ways=3, shots=1, queries=1)
  tasks = jax.vmap(family.sample)(jax.random.split(jax.random.key(1), 2))
  grads = {}
  for impl in ("xla", "im2col"):
    model = mj.compose(mj.conv4(filters=8, groups=4, conv_impl=impl, image_size=16),
                       mj.linear_head(3))
    params = model.init(jax.random.key(2), jnp.zeros((3, 16, 16)))
    learner = mj.meta_learner(mj.supervised(model.apply, mj.cross_entropy), optax.sgd(0.1),
                              inner_lr=0.4, meta_batch_size=2)
    meta_loss = lambda p: jnp.mean(jax.vmap(lambda e: learner.task_loss(p, e)[0])(tasks))
    # Under jit only: the eager/jit disagreement of speed notes row 4 came from max-pool's
    # gradient on ties, which test_max_pool_..._even_on_ties checks both ways (an eager
    # second-order Conv4 gradient cost this test ~30 s of op-by-op dispatch).
    grads[impl] = jax.jit(jax.grad(meta_loss))(params)
  for a, b in zip(jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads["im2col"])):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)
  with pytest.raises(ValueError, match="conv_impl must be one of"):
    mj.conv4(conv_impl="fft")


@pytest.mark.parametrize("module,old,new", [
    ("mtpjax", "MetaState", "mtpjax.TrainState"),
    ("mtpjax", "mesh_from_env", "experiments._lib.env.mesh_from_env"),
    ("mtpjax", "initialize_from_env", "experiments._lib.env.initialize_from_env"),
    ("mtpjax.mtl", "MultiTaskState", "mtpjax.TrainState"),
    ("mtpjax.mtl", "TOY_STARTS", "mtpjax.tasks.toy.STARTS"),
    ("mtpjax.mtl", "toy_losses", "mtpjax.tasks.toy.toy_losses"),
    ("mtpjax.mtl", "pareto_x2", "mtpjax.tasks.toy.pareto_x2"),
    ("mtpjax.mtl", "on_pareto_set", "mtpjax.tasks.toy.on_pareto_set"),
    ("mtpjax.mtl", "toy_trajectories", "benchmarks.mtl_toy.toy_trajectories"),
])
def test_old_public_names_still_work_with_a_deprecation_warning(module, old, new):
  import importlib
  mod = importlib.import_module(module)
  with pytest.warns(DeprecationWarning, match=rf"{module}.{old} is deprecated .* use {new}"):
    value = getattr(mod, old)
  where, name = new.rsplit(".", 1)
  assert value is getattr(importlib.import_module(where), name)
  with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
    getattr(mod, "no_such_name")

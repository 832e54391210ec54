"""Per-task metrics, Δm in both conventions, distillation and the multi-task architectures,
each against a hand computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtpjax as mj


def test_confusion_matrix_and_macro_metrics_on_a_known_case():
  labels = jnp.array([0, 0, 0, 1, 1, 2])
  preds = jnp.array([0, 0, 1, 1, 2, 2])
  cm = mj.mtl.confusion_matrix(preds, labels, 3)
  np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
  logits = jax.nn.one_hot(preds, 3) * 5.0
  np.testing.assert_array_equal(jax.jit(mj.mtl.confusion_matrix, static_argnums=2)(
      logits, labels, 3), cm)
  m = mj.mtl.classification_metrics(cm)
  precision = [2 / 2, 1 / 2, 1 / 2]
  recall = [2 / 3, 1 / 2, 1 / 1]
  f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
  assert m["accuracy"] == pytest.approx(4 / 6)
  assert m["precision"] == pytest.approx(np.mean(precision))
  assert m["recall"] == pytest.approx(np.mean(recall))
  assert m["f1"] == pytest.approx(np.mean(f1))


def test_macro_metrics_skip_absent_classes_and_count_unpredicted_ones_as_zero():
  # Class 2 never occurs; class 1 occurs but is never predicted (precision 0, recall 0).
  cm = np.array([[3, 0, 0], [2, 0, 0], [0, 0, 0]])
  m = mj.mtl.classification_metrics(cm)
  assert m["precision"] == pytest.approx((3 / 5 + 0) / 2)
  assert m["recall"] == pytest.approx((1 + 0) / 2)
  assert m["f1"] == pytest.approx((2 * 0.6 / 1.6 + 0) / 2)


def test_delta_m_in_both_conventions_on_a_hand_made_table():
  higher = {"acc": True, "f1": True, "mse": False}
  base = {"A": {"acc": 0.8, "f1": 0.7}, "B": {"mse": 0.4}}
  new = {"A": {"acc": 0.9, "f1": 0.7}, "B": {"mse": 0.5}}
  # LibMTL: per task first: A (0.125 + 0) / 2, B -0.25, then over tasks; + = better.
  assert mj.mtl.delta_m(new, base, higher, convention="libmtl") == pytest.approx(
      100 * (0.0625 - 0.25) / 2)
  # Nash-MTL/CAGrad/FAMO: one mean over the three metrics; lower = better.
  assert mj.mtl.delta_m(new, base, higher, convention="mean") == pytest.approx(
      -100 * (0.125 + 0 - 0.25) / 3)
  both = mj.mtl.delta_m_both(new, base, higher)
  assert set(both) == {"libmtl", "mean"}
  # LibMTL's docstring example (count_improvement) gives 0.7396..., a fraction.
  libmtl = mj.mtl.delta_m({"A": {"m0": 93, "m1": 99}, "B": {"m2": 0.5}},
                          {"A": {"m0": 96, "m1": 98}, "B": {"m2": 0.2}},
                          {"m0": True, "m1": False, "m2": True}, convention="libmtl")
  assert libmtl == pytest.approx(100 * ((-3 / 96 - 1 / 98) / 2 + 1.5) / 2)
  with pytest.raises(ValueError, match="higher is better"):
    mj.mtl.delta_m(new, base, {"acc": True}, convention="mean")
  with pytest.raises(ValueError, match="convention"):
    mj.mtl.delta_m(new, base, higher, convention="nash")


def test_distillation_matches_its_closed_form_and_gradient():
  student = jnp.array([[1.0, 0.0]])
  teacher = jnp.array([[0.0, 1.0]])
  # T = 2: p = softmax([0, .5]), q = softmax([.5, 0]); KL(p||q) = (1 - 2a) * 0.5 with
  # a = 1 / (1 + e^.5), and 1 - 2a = tanh(1/4): the soft term is T^2 * KL = 2 tanh(1/4).
  soft = mj.mtl.distillation_loss(student, teacher, temperature=2.0, alpha=1.0)
  assert float(soft) == pytest.approx(2 * np.tanh(0.25), rel=1e-5)
  labels = jnp.array([1])
  mixed = mj.mtl.distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.3)
  ce = np.log(1 + np.e)  # -log softmax([1, 0])[1]
  assert float(mixed) == pytest.approx(0.3 * 2 * np.tanh(0.25) + 0.7 * ce, rel=1e-5)
  # d(T^2 KL)/ds = T (softmax(s/T) - softmax(t/T)) / n; the teacher gets no gradient.
  rng = np.random.default_rng(0)
  s, t = (jnp.asarray(rng.normal(size=(4, 5)), jnp.float32) for _ in range(2))
  gs, gt = jax.grad(lambda s, t: mj.mtl.distillation_loss(s, t, temperature=3.0, alpha=1.0),
                    argnums=(0, 1))(s, t)
  np.testing.assert_allclose(gs, 3.0 * (jax.nn.softmax(s / 3) - jax.nn.softmax(t / 3)) / 4,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(gt, 0.0)
  with pytest.raises(ValueError, match="hard labels"):
    mj.mtl.distillation_loss(s, t, alpha=0.5)


def test_mmoe_with_one_expert_is_the_shared_bottom_and_gates_lie_on_the_simplex():
  x = jax.random.normal(jax.random.key(1), (6, 10))
  prompt = mj.prompts.context(3, init_scale=0.5)
  moe = mj.mtl.mmoe(1, (16,), (8,), 2, prompt=prompt, context_dim=3)
  bottom = mj.mtl.shared_bottom((16,), (8,), 2, prompt=prompt, context_dim=3)
  p = moe.init(jax.random.key(0), x)
  q = {"shared": jax.tree.map(lambda a: a[0], p["shared"]), "head": p["head"]["tower"],
       "prompt": p["prompt"]}
  np.testing.assert_allclose(moe.apply(p, x), bottom.apply(q, x), rtol=1e-5, atol=1e-6)
  four = mj.mtl.mmoe(4, (16,), (8,), 2)
  p4 = four.init(jax.random.key(0), x)
  g = four.gates(p4, x)
  assert g.shape == (6, 4)
  np.testing.assert_allclose(g.sum(-1), 1.0, rtol=1e-6)
  assert bool(jnp.all(g > 0))
  with pytest.raises(ValueError, match="context_dim"):
    mj.mtl.mmoe(2, (16,), (8,), 1, prompt=prompt)


def test_aggregation_mean_weighted_mean_and_the_mpt_decomposition():
  prompts = {"p": jnp.arange(12.0).reshape(3, 2, 2)}
  np.testing.assert_allclose(mj.mtl.aggregate_mean(prompts)["p"], [[4, 5], [6, 7]])
  w = mj.mtl.weighted_mean(prompts, jnp.array([1.0, 0.0, 3.0]))["p"]
  np.testing.assert_allclose(w, (0.25 * np.arange(4) + 0.75 * np.arange(8, 12)).reshape(2, 2))
  with pytest.raises(ValueError, match="one score per task"):
    mj.mtl.weighted_mean(prompts, jnp.ones(2))
  with pytest.raises(ValueError, match=">= 0"):
    mj.mtl.weighted_mean(prompts, jnp.array([1.0, -1.0, 1.0]))
  # Prompts that have the MPT form (shared * rank-1 per task) are reconstructed almost
  # exactly, and the fitted factors still give every task's prompt.
  rng = np.random.default_rng(0)
  shared = rng.normal(size=(4, 6))
  u = 1 + 0.3 * rng.normal(size=(5, 4, 1))
  v = 1 + 0.3 * rng.normal(size=(5, 1, 6))
  tuned = shared[None] * (u @ v)
  mpt = mj.mtl.mpt_decompose(jnp.asarray(tuned), rank=1, steps=3000, lr=1e-2)
  assert float(mpt.error) < 0.02
  np.testing.assert_allclose(mpt.shared[None] * (mpt.u @ mpt.v), tuned, atol=0.05)
  # Unstructured prompts are not: the error says how much the form loses.
  noise = mj.mtl.mpt_decompose(jnp.asarray(rng.normal(size=(5, 4, 6))), rank=1, steps=500)
  assert float(noise.error) > 0.3

"""Prompts and the prompted Transformer encoder."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtpjax as mj
from mtpjax import prompts

VOCAB, WIDTH, DEPTH, T = 40, 16, 2, 10


def encoder(pooling="cls"):
  enc = mj.transformer(VOCAB, width=WIDTH, depth=DEPTH, heads=2, max_len=T, pooling=pooling)
  return enc._replace(apply=jax.jit(enc.apply), embed=jax.jit(enc.embed))


def tokens(seed=0, n=3):
  rng = np.random.default_rng(seed)
  x = rng.integers(1, VOCAB, size=(n, T)).astype(np.int32)
  x[0, 6:] = 0  # padding
  x[1, 3:] = 0
  return jnp.asarray(x)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_length_zero_prompt_and_prefix_are_exactly_the_unprompted_encoder(pooling):
  enc = encoder(pooling)
  x = tokens()
  p = enc.init(jax.random.key(0), x)
  plain = enc.apply(p, x)
  empty_tokens = {"tokens": jnp.zeros((0, WIDTH))}
  empty_prefix = {"prefix": jnp.zeros((DEPTH, 2, 0, WIDTH))}
  np.testing.assert_array_equal(enc.apply(p, x, empty_tokens), plain)
  np.testing.assert_array_equal(enc.apply(p, x, empty_prefix), plain)
  np.testing.assert_array_equal(enc.apply(p, x, {**empty_tokens, **empty_prefix}), plain)
  # A non-empty prompt does change the output (else the test above proves nothing).
  some = {"tokens": jnp.ones((2, WIDTH))}
  assert not np.allclose(enc.apply(p, x, some), plain)
  assert not np.allclose(enc.apply(p, x, {"prefix": jnp.ones((DEPTH, 2, 2, WIDTH))}), plain)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_outputs_do_not_depend_on_padded_positions(pooling):
  enc = encoder(pooling)
  x = tokens()
  p = enc.init(jax.random.key(0), x)
  ctx = {"tokens": jax.random.normal(jax.random.key(1), (3, WIDTH)),
         "prefix": jax.random.normal(jax.random.key(2), (DEPTH, 2, 2, WIDTH))}
  out = enc.apply(p, x, ctx)
  # 1. Whatever the padding embedding holds, the output is the same, bit for bit.
  p2 = jax.tree.map(lambda a: a, p)
  table = p2["token_embed"]["embedding"]
  p2["token_embed"]["embedding"] = table.at[0].set(100.0 * jnp.ones(WIDTH))
  np.testing.assert_array_equal(enc.apply(p2, x, ctx), out)
  # 2. Trimming the padding away gives the same output for the short sequence.
  short = x[1:2, :3]
  np.testing.assert_allclose(enc.apply(p, short, ctx), out[1:2], rtol=1e-5, atol=1e-6)


def test_per_instance_prompts_match_one_at_a_time():
  enc = encoder()
  x = tokens()
  p = enc.init(jax.random.key(0), x)
  per = jax.random.normal(jax.random.key(1), (3, 2, WIDTH))  # [n, P, d]
  out = enc.apply(p, x, {"tokens": per})
  for i in range(3):
    np.testing.assert_allclose(enc.apply(p, x[i:i + 1], {"tokens": per[i]}), out[i:i + 1],
                               rtol=1e-5, atol=1e-6)


def test_ensemble_weights_are_a_distribution_and_one_hot_selects_the_entry():
  kind = prompts.ensembled(5, 3, WIDTH, key_dim=4, temperature=0.5)
  shared, task = kind.init(jax.random.key(0))
  w = prompts.ensemble_weights(kind, shared, task)
  assert w.shape == (5,) and np.all(np.asarray(w) >= 0)
  np.testing.assert_allclose(jnp.sum(w), 1.0, rtol=1e-6)
  np.testing.assert_allclose(kind.apply(shared, task)["tokens"], prompts.mix(shared["bank"], w),
                             rtol=1e-6)
  for k in range(5):
    np.testing.assert_array_equal(prompts.mix(shared["bank"], jax.nn.one_hot(k, 5)),
                                  shared["bank"][k])
  # Temperature sharpens: as it falls, the mix approaches the best-matching entry.
  cold = prompts.ensembled(5, 3, WIDTH, key_dim=4, temperature=1e-4)
  w_cold = prompts.ensemble_weights(cold, shared, task)
  np.testing.assert_allclose(w_cold, jax.nn.one_hot(jnp.argmax(w), 5), atol=1e-6)


def test_instance_ensemble_weights_depend_on_the_instance():
  enc = encoder()
  kind = prompts.ensembled(4, 2, WIDTH, key_dim=4, instance=True)
  model = mj.compose(enc, mj.linear_head(3), kind)
  x = tokens()
  params = model.init(jax.random.key(0), x)
  embed = lambda xs: enc.embed(params["shared"], xs)
  w = prompts.ensemble_weights(kind, params["prompt_shared"], params["prompt"], x=x, embed=embed)
  assert w.shape == (3, 4)
  np.testing.assert_allclose(jnp.sum(w, -1), 1.0, rtol=1e-6)
  assert not np.allclose(w[0], w[1])
  assert model.apply(params, x).shape == (3, 3)


def test_generated_prompts_follow_the_task_representation_and_train_the_generator():
  enc = encoder()
  kind = prompts.generated(3, WIDTH, repr_dim=8, hidden=16)
  model = mj.compose(enc, mj.linear_head(2), kind)
  x = tokens()
  params = model.init(jax.random.key(0), x)
  r1, r2 = jnp.ones(8), -jnp.ones(8)
  p1 = kind.apply(params["prompt_shared"], params["prompt"], task_repr=r1)["tokens"]
  p2 = kind.apply(params["prompt_shared"], params["prompt"], task_repr=r2)["tokens"]
  assert p1.shape == (3, WIDTH) and not np.allclose(p1, p2)
  assert not np.allclose(model.apply(params, x, task_repr=r1), model.apply(params, x, task_repr=r2))
  # A support-set summary is a task representation too.
  summary = prompts.support_summary(enc.embed, params["shared"], x)
  assert summary.shape == (WIDTH,)
  loss = lambda p: jnp.sum(model.apply(p, x) ** 2)
  g = jax.grad(loss)(params)
  for name in ("w1", "w2", "b2"):
    assert float(jnp.abs(g["prompt_shared"][name]).sum()) > 0, name
  assert float(jnp.abs(g["prompt"]).sum()) > 0  # the task embedding is adaptable


def test_generated_prompt_with_a_representation_offset_refines_the_support_representation():
  plain = prompts.generated(2, WIDTH, repr_dim=8, hidden=16)
  offset = prompts.generated(2, WIDTH, repr_dim=8, hidden=16, repr_offset=True)
  gen, task = offset.init(jax.random.key(0))
  assert not np.any(task)  # zero at the start of every task
  r = jnp.linspace(-1, 1, 8)
  # With a zero offset it is the plain generator's prompt for that representation ...
  np.testing.assert_array_equal(offset.apply(gen, task, task_repr=r)["tokens"],
                                plain.apply(gen, jnp.ones(8), task_repr=r)["tokens"])
  # ... and an offset o generates the prompt of r + o, with a gradient for the inner loop.
  o = 0.1 * jnp.ones(8)
  np.testing.assert_allclose(offset.apply(gen, o, task_repr=r)["tokens"],
                             plain.apply(gen, None, task_repr=r + o)["tokens"], rtol=1e-6)
  g = jax.grad(lambda t: jnp.sum(offset.apply(gen, t, task_repr=r)["tokens"] ** 2))(task)
  assert float(jnp.abs(g).sum()) > 0


@pytest.mark.parametrize("mode", ["add", "concat", "mpt"])
def test_composed_prompts(mode):
  kind = prompts.composed(4, WIDTH, mode=mode, task_length=2, rank=2)
  shared, task = kind.init(jax.random.key(0))
  p = kind.apply(shared, task)["tokens"]
  if mode == "add":
    np.testing.assert_array_equal(p, shared)  # the task part starts at zero
    np.testing.assert_allclose(kind.apply(shared, jnp.ones_like(task))["tokens"], shared + 1.0)
  elif mode == "concat":
    assert p.shape == (6, WIDTH)
    np.testing.assert_array_equal(p[:4], shared)
    np.testing.assert_array_equal(p[4:], task)
  else:
    np.testing.assert_allclose(p, shared, rtol=1e-6)  # U V starts as all ones
    u = jax.random.normal(jax.random.key(1), task["u"].shape)
    v = jax.random.normal(jax.random.key(2), task["v"].shape)
    np.testing.assert_allclose(kind.apply(shared, {"u": u, "v": v})["tokens"], shared * (u @ v),
                               rtol=1e-5)
    assert np.linalg.matrix_rank(np.asarray(u @ v)) <= 2


def test_prompt_initialisations():
  enc = encoder()
  p = enc.init(jax.random.key(0), tokens())
  table = mj.token_embeddings(p)
  drawn = prompts.from_vocab(jax.random.key(3), table, 5)
  rows = {tuple(np.round(np.asarray(r), 6)) for r in table[1:]}
  assert all(tuple(np.round(np.asarray(r), 6)) in rows for r in drawn)
  np.testing.assert_array_equal(prompts.from_tokens(table, [4, 7]), table[jnp.array([4, 7])])
  with pytest.raises(ValueError, match="token ids must lie"):
    prompts.from_tokens(table, [VOCAB])
  a, b = jnp.ones((2, 3)), 3 * jnp.ones((2, 3))
  np.testing.assert_array_equal(prompts.average([a, b]), 2 * jnp.ones((2, 3)))


def test_prompt_tuning_with_a_frozen_backbone_updates_only_the_prompt_and_head():
  data = mj.tasks.tokens.keyword_classes(0, num_classes=8, per_class=6, length=T, vocab_size=VOCAB)
  fam = mj.tasks.classification.episodes(data, ways=3, shots=2, queries=2)
  model = mj.compose(encoder(), mj.linear_head(3), prompts.static(2, WIDTH))
  params = model.init(jax.random.key(0), jnp.asarray(data[0, :2]))
  loss_fn = mj.supervised(model.apply, mj.cross_entropy)
  algo = mj.get_algorithm("maml", fast=("prompt", "head"), outer=("prompt", "head"))
  learner = mj.meta_learner(loss_fn, optax.adam(1e-2), algorithm=algo, inner_lr=0.1,
                            meta_batch_size=2, sample=fam.sample)
  state = learner.init(params, key=jax.random.key(1))
  for _ in range(3):
    state, _ = learner.step(state)
  chex.assert_trees_all_equal(state.params["shared"], params["shared"])
  assert not np.allclose(state.params["prompt"], params["prompt"])
  n_shared = sum(x.size for x in jax.tree.leaves(params["shared"]))
  n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
  n_outer = sum(x.size for r in ("prompt", "head") for x in jax.tree.leaves(params[r]))
  assert n_opt == 2 * n_outer and n_shared > n_outer  # no optimizer state for the backbone


W = 8  # a tiny encoder: these runs check wiring, and second-order compiles cost time
def tiny_task_family():
  """2-way 1-shot keyword episodes and a width-8, depth-1 encoder."""
  data = mj.tasks.tokens.keyword_classes(0, num_classes=6, per_class=4, length=6, vocab_size=VOCAB)
  fam = mj.tasks.classification.episodes(data, ways=2, shots=1, queries=2)
  enc = mj.transformer(VOCAB, width=W, depth=1, heads=1, max_len=6, mlp_dim=8)
  return data, fam, enc


KINDS = {
    "static": lambda: prompts.static(2, W),
    "static_shared": lambda: prompts.static(2, W, shared=True),
    "prefix": lambda: prompts.static(2, W, prefix_depth=1),
    "composed_add": lambda: prompts.composed(2, W, mode="add"),
    "composed_concat": lambda: prompts.composed(2, W, mode="concat", task_length=1),
    "composed_mpt_prefix": lambda: prompts.composed(2, W, mode="mpt", rank=1, prefix_depth=1),
    "generated": lambda: prompts.generated(2, W, repr_dim=4, hidden=8),
    "ensembled": lambda: prompts.ensembled(3, 2, W, key_dim=4),
    "ensembled_instance": lambda: prompts.ensembled(3, 2, W, key_dim=4, instance=True),
}


# Every kind under second-order MAML; the other gradient rules on one kind of each family
# (tokens, generated from the support set, attention over a pool). What adapts is a label
# over the roles, separate from how the meta-gradient is computed, so the full cross product
# would repeat the same code paths at ~10 s of compilation each.
CASES = [(k, "maml") for k in sorted(KINDS)] + [
    (k, a) for k in ("static", "generated", "ensembled_instance") for a in ("fomaml", "reptile")]


@pytest.mark.parametrize("kind,algorithm", CASES)
def test_every_prompt_kind_meta_learns_in_the_jitted_vmapped_step(kind, algorithm):
  data, fam, enc = tiny_task_family()
  model = mj.compose(enc, mj.linear_head(2), KINDS[kind]())
  params = model.init(jax.random.key(0), jnp.asarray(data[0, :1]))
  fast = ("prompt",) if "prompt" in params else ("prompt_shared",)
  algo = mj.get_algorithm(algorithm, fast=fast)
  learner = mj.meta_learner(mj.supervised(model.apply, mj.cross_entropy), optax.adam(1e-2),
                            algorithm=algo, inner_lr=0.1, inner_steps=1, meta_batch_size=2,
                            sample=fam.sample)
  state = learner.init(params, key=jax.random.key(1))
  for _ in range(2):
    state, metrics = learner.step(state)
  assert np.isfinite(float(metrics["loss"]))
  role = fast[0]
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), state.params[role], params[role])
  assert any(jax.tree.leaves(moved)), "the prompt's initialisation was not meta-learned"


def test_a_prompt_transfers_from_another_runs_checkpoint(tmp_path):
  kind = prompts.static(3, WIDTH)
  model = mj.compose(encoder(), mj.linear_head(2), kind)
  params = model.init(jax.random.key(0), tokens())
  learner = mj.meta_learner(mj.supervised(model.apply, mj.cross_entropy), optax.sgd(0.1))
  state = learner.init(params, key=jax.random.key(0))
  state = state._replace(params={**state.params, "prompt": state.params["prompt"] + 1.0})
  mj.Checkpointer(str(tmp_path)).save(state, {"note": "source run"})
  source = mj.restore_params(str(tmp_path), roles=("prompt",))
  np.testing.assert_array_equal(source["prompt"], params["prompt"] + 1.0)
  target = model.init(jax.random.key(5), tokens())
  target["prompt"] = jnp.asarray(source["prompt"])  # SPoT: the new run starts from it
  assert model.apply(target, tokens()).shape == (3, 2)
  with pytest.raises(mj.CheckpointError, match="no roles"):
    mj.restore_params(str(tmp_path), roles=("prompt_shared",))
  with pytest.raises(mj.CheckpointError, match="no checkpoint"):
    mj.restore_params(str(tmp_path / "nothing"))


def test_generated_prompt_from_the_support_summary_inside_the_meta_step():
  data, fam, enc = tiny_task_family()
  kind = prompts.generated(2, W, repr_dim=W, hidden=8)
  model = mj.compose(enc, mj.linear_head(2), kind)
  params = model.init(jax.random.key(0), jnp.asarray(data[0, :1]))
  loss_fn = mj.supervised(model.apply, mj.cross_entropy)
  summary = lambda p, support: prompts.support_summary(enc.embed, p["shared"], support.x)
  algo = mj.get_algorithm("maml", fast=("head",))
  learner = mj.meta_learner(loss_fn, optax.sgd(0.1), algorithm=algo, inner_lr=0.1,
                            task_repr=summary)
  ep = jax.tree.map(lambda a: a[0], jax.vmap(fam.sample)(jax.random.split(jax.random.key(3), 1)))
  # The task loss is the loss with the prompt generated from this support set's summary.
  got, _ = jax.jit(learner.task_loss)(params, ep)

  @jax.jit
  def by_hand(params, ep):
    r = summary(params, ep.support)
    adapted, _ = mj.adapt(lambda p, b: loss_fn(p, b, task_repr=r), params, ep.support,
                          fast=("head",), steps=1, lr=0.1)
    return loss_fn(adapted, ep.query, task_repr=r)

  np.testing.assert_allclose(got, by_hand(params, ep), rtol=1e-6)
  # Gradients reach the generator and, through the summary, the encoder's embeddings.
  g = jax.jit(jax.grad(lambda p: learner.task_loss(p, ep)[0]))(params)
  assert float(jnp.abs(g["prompt_shared"]["w1"]).sum()) > 0
  assert float(jnp.abs(g["shared"]["token_embed"]["embedding"]).sum()) > 0
  # Evaluation passes the same representation to its metrics.
  res = mj.evaluate(learner, params, fam.sample, key=jax.random.key(3), num_tasks=1,
                    inner_steps=(1,))
  np.testing.assert_allclose(res.per_task["loss"][0, 1], got, rtol=1e-5)


def test_meta_sgd_learns_per_parameter_rates_for_a_nested_prompt():
  data, fam, enc = tiny_task_family()
  model = mj.compose(enc, mj.linear_head(2), KINDS["composed_mpt_prefix"]())
  params = model.init(jax.random.key(0), jnp.asarray(data[0, :1]))
  algo = mj.get_algorithm("metasgd", fast=("prompt",))
  learner = mj.meta_learner(mj.supervised(model.apply, mj.cross_entropy), optax.adam(1e-2),
                            algorithm=algo, inner_lr=0.1, meta_batch_size=2, sample=fam.sample)
  state = learner.init(params, key=jax.random.key(1))
  chex.assert_trees_all_equal_structs(state.params["inner_lr"], {"prompt": params["prompt"]})
  for _ in range(2):
    state, _ = learner.step(state)
  rates = state.params["inner_lr"]["prompt"]
  assert not np.allclose(rates["u"], 0.1) and not np.allclose(rates["v"], 0.1)

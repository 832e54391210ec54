"""The meta-step with its tasks split over 4 forced CPU devices equals the single-device step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtpjax as mj

TASKS = 8


def problem():
  family = mj.tasks.sinusoid.family(5, 5)
  model = mj.compose(mj.mlp((16, 16)), mj.linear_head(1))
  params = model.init(jax.random.key(0), jnp.zeros((5, 1)))
  return family, mj.supervised(model.apply, mj.mse), params


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_the_sharded_meta_step_equals_the_single_device_step(algorithm):
  assert jax.device_count() == 4  # conftest.py forces 4 host devices
  family, loss_fn, params = problem()
  kw = dict(algorithm=algorithm, inner_steps=2, inner_lr=0.05, meta_batch_size=TASKS,
            sample=family.sample)
  mesh = mj.task_mesh()
  one = mj.meta_learner(loss_fn, optax.adam(1e-2), **kw)
  four = mj.meta_learner(loss_fn, optax.adam(1e-2), mesh=mesh, **kw)
  s1, s4 = one.init(params, key=jax.random.key(1)), four.init(params, key=jax.random.key(1))
  assert len(jax.tree.leaves(s4.params)[0].sharding.device_set) == 4  # replicated on 4
  for _ in range(3):
    s1, m1 = one.step(s1)
    s4, m4 = four.step(s4)
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
               s4.params, s1.params)
  # The tasks really are split: the step's per-task keys [tasks, 2] are constrained to the
  # mesh's "tasks" axis (4 partitions), and XLA partitions the vmapped work from there.
  hlo = jax.jit(lambda s: four.step(s)).lower(s4).as_text()
  assert "num_partitions = 4" in hlo
  assert re.search(r'sdy\.sharding_constraint %\w+ <@mesh, \[\{"tasks"\}, \{\}\]> : '
                   rf'tensor<{TASKS}x2xui32>', hlo)
  # A given meta-batch of episodes is split the same way.
  tasks = jax.vmap(family.sample)(jax.random.split(jax.random.key(7), TASKS))
  a, _ = one.step(s1, tasks)
  b, _ = four.step(s4, tasks)
  # Four Adam steps now: the mean over tasks sums in another order across devices, and Adam's
  # normalisation lifts that rounding in coordinates with near-zero gradients.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=3e-6),
               b.params, a.params)


def test_param_spec_splits_large_arrays_over_the_model_axis_along_a_divisible_dimension():
  mesh = mj.task_mesh(model=2)
  assert mesh.shape == {"tasks": 2, "model": 2}
  spec = lambda shape: tuple(mj.param_spec(shape, mesh))
  assert spec((384, 1536)) == (None, "model")  # the largest dimension
  assert spec((1537, 384)) == (None, "model")  # the largest that 2 divides
  assert spec((64, 64)) == ("model",)          # the first of equals
  assert spec((63, 65)) == ()                  # none divides: replicated
  assert spec((384,)) == ()                    # small (< MIN_SHARDED_SIZE elements): replicated
  assert spec(()) == ()
  assert tuple(mj.param_spec((384, 1536), mj.task_mesh())) == ()  # no "model" axis
  with pytest.raises(ValueError, match="model=3 does not divide the 4 devices"):
    mj.task_mesh(model=3)


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_a_model_axis_splits_the_parameters_and_moments_and_gives_the_same_step(algorithm):
  """2 task shards x 2 model shards: every 64x64 kernel and its Adam moments live half on each
  device of a model pair, stay so after the steps, and the steps equal one device's."""
  family = mj.tasks.sinusoid.family(5, 5)
  model = mj.compose(mj.mlp((64, 64)), mj.linear_head(1))
  params = model.init(jax.random.key(0), jnp.zeros((5, 1)))
  loss_fn = mj.supervised(model.apply, mj.mse)
  kw = dict(algorithm=algorithm, inner_steps=2, inner_lr=0.05, meta_batch_size=TASKS,
            sample=family.sample)
  one = mj.meta_learner(loss_fn, optax.adam(1e-2), **kw)
  mesh = mj.task_mesh(model=2)
  split = mj.meta_learner(loss_fn, optax.adam(1e-2), mesh=mesh, **kw)
  s1, s2 = one.init(params, key=jax.random.key(1)), split.init(params, key=jax.random.key(1))

  def kernels(state):
    mu = state.opt_state[0].mu
    return [x for tree in (state.params, mu) for x in jax.tree.leaves(tree) if x.size >= 4096]

  def split_bytes(state):  # bytes of one device's share of the split arrays
    return sum(x.addressable_shards[0].data.nbytes for x in kernels(state))

  assert len(kernels(s2)) == 2  # the 64x64 kernel and its first moment (nu: see below)
  for _ in range(3):
    s1, m1 = one.step(s1)
    s2, m2 = split.step(s2)
    for x in kernels(s2):
      assert x.addressable_shards[0].data.shape == (32, 64)
      assert x.sharding.spec == jax.sharding.PartitionSpec("model")
  assert split_bytes(s2) == sum(x.nbytes for x in kernels(s2)) // 2
  nu = [x for x in jax.tree.leaves(s2.opt_state[0].nu) if x.size >= 4096]
  assert [x.sharding.spec for x in nu] == [jax.sharding.PartitionSpec("model")]
  np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
               s2.params, s1.params)
  # The compiled step's inputs per device: the split arrays count half.
  sizes = [jax.jit(lambda s: lrn.step(s)).lower(s).compile().memory_analysis()
           .argument_size_in_bytes for lrn, s in ((one, s1), (split, s2))]
  assert sizes[0] - sizes[1] == 3 * 64 * 64 * 4 // 2  # kernel, mu, nu: half of each


def test_a_meta_batch_that_does_not_divide_over_the_devices_is_a_clear_error():
  family, loss_fn, _ = problem()
  with pytest.raises(ValueError, match=r"meta_batch_size=6 does not divide over the 4 devices.*"
                                       r"multiple of 4 \(e.g. 8\)"):
    mj.meta_learner(loss_fn, optax.sgd(0.1), meta_batch_size=6, mesh=mj.task_mesh(),
                    sample=family.sample)
  bad = jax.make_mesh((4,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
  with pytest.raises(ValueError, match="needs an axis named 'tasks'"):
    mj.meta_learner(loss_fn, optax.sgd(0.1), meta_batch_size=8, mesh=bad)


def test_evaluate_takes_the_replicated_parameters_of_a_sharded_learner():
  family, loss_fn, params = problem()
  one = mj.meta_learner(loss_fn, optax.adam(1e-2), meta_batch_size=TASKS, sample=family.sample)
  four = mj.meta_learner(loss_fn, optax.adam(1e-2), meta_batch_size=TASKS, sample=family.sample,
                         mesh=mj.task_mesh())
  state = four.init(params, key=jax.random.key(1))
  a = mj.evaluate(four, state.params, family.sample, key=jax.random.key(2), num_tasks=8)
  b = mj.evaluate(one, params, family.sample, key=jax.random.key(2), num_tasks=8)
  np.testing.assert_allclose(a.per_task["loss"], b.per_task["loss"], rtol=1e-5)


@pytest.mark.parametrize("method", ["equal", "mgda"])
def test_the_sharded_multitask_step_equals_the_single_device_step(method):
  """Four tasks' batches split over 4 forced devices: the same step as on one device."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 16, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)
  params = {"shared": {"w": jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)},
            "head": {"v": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)}}

  def loss_fn(p, batch):
    bx, by = batch
    return jnp.mean((jnp.tanh(bx @ p["shared"]["w"]) @ p["head"]["v"] - by) ** 2)

  out = []
  for mesh in (None, mj.task_mesh(), mj.task_mesh(model=2)):
    trainer = mj.mtl.multitask_trainer(loss_fn, optax.adam(1e-2), mj.mtl.get(method),
                                       num_tasks=4, mesh=mesh)
    state = trainer.init(params, key=jax.random.key(1))
    for _ in range(3):
      state, metrics = trainer.step(state, (x, y))
    out.append((state.params, metrics["task_losses"]))
  for params, losses in out[1:]:
    np.testing.assert_allclose(losses, out[0][1], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                 params, out[0][0])
  with pytest.raises(ValueError, match="num_tasks=3 does not divide"):
    mj.mtl.multitask_trainer(loss_fn, optax.adam(1e-2), mj.mtl.get(method), num_tasks=3,
                             mesh=mj.task_mesh())

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
  assert jax.device_count() == 4  # tests/conftest.py forces 4 host devices
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
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6),
               b.params, a.params)


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
  for mesh in (None, mj.task_mesh()):
    trainer = mj.mtl.multitask_trainer(loss_fn, optax.adam(1e-2), mj.mtl.get(method),
                                       num_tasks=4, mesh=mesh)
    state = trainer.init(params, key=jax.random.key(1))
    for _ in range(3):
      state, metrics = trainer.step(state, (x, y))
    out.append((state.params, metrics["task_losses"]))
  np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
               out[1][0], out[0][0])
  with pytest.raises(ValueError, match="num_tasks=3 does not divide"):
    mj.mtl.multitask_trainer(loss_fn, optax.adam(1e-2), mj.mtl.get(method), num_tasks=3,
                             mesh=mj.task_mesh())

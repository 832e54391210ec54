"""Memory controls of long inner loops: remat policies change memory, never the meta-gradient;
bfloat16 compute keeps float32 master parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtpjax as mj

STEPS = 20


def problem():
  family = mj.tasks.sinusoid.family(10, 10)
  model = mj.compose(mj.mlp((64, 64)), mj.linear_head(1))
  params = model.init(jax.random.key(0), jnp.zeros((10, 1)))
  tasks = jax.vmap(family.sample)(jax.random.split(jax.random.key(1), 4))
  return model, params, tasks


def meta_grad_fn(loss_fn, remat, steps=STEPS):
  learner = mj.meta_learner(loss_fn, optax.sgd(0.1), inner_steps=steps, inner_lr=0.01,
                            meta_batch_size=4, remat=remat)
  return jax.jit(jax.grad(
      lambda p, tasks: jnp.mean(jax.vmap(lambda ep: learner.task_loss(p, ep)[0])(tasks))))


@pytest.mark.parametrize("remat", [True, "nothing_saveable", "dots_saveable"])
def test_remat_policies_give_the_same_second_order_meta_gradient_in_less_memory(remat):
  model, params, tasks = problem()
  loss_fn = mj.supervised(model.apply, mj.mse)
  plain, rematted = meta_grad_fn(loss_fn, False), meta_grad_fn(loss_fn, remat)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               rematted(params, tasks), plain(params, tasks))

  def temp(f):
    return f.lower(params, tasks).compile().memory_analysis().temp_size_in_bytes
  if remat != "dots_saveable":  # keeps the matmuls: the measured figure is in the README
    assert temp(rematted) < 0.75 * temp(plain), (temp(rematted), temp(plain))


def test_an_unknown_remat_policy_is_a_clear_error():
  model, _, _ = problem()
  with pytest.raises(ValueError, match=r"remat must be .* one of \['nothing_saveable'"):
    mj.meta_learner(mj.supervised(model.apply, mj.mse), optax.sgd(0.1), remat="save_all")


def test_mixed_precision_computes_in_bfloat16_on_float32_master_parameters():
  model, params, tasks = problem()
  f32 = mj.supervised(model.apply, mj.mse)
  bf16 = mj.mixed_precision(f32)
  episode = jax.tree.map(lambda x: x[0], tasks)
  # The loss is a float32 scalar, close to the float32 loss at bfloat16's ~3 digits.
  loss = bf16(params, episode.support)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, f32(params, episode.support), rtol=2e-2)
  # The forward pass really runs in bfloat16: the network's output is bfloat16.
  seen = []
  mj.mixed_precision(lambda p, b: seen.append(model.apply(p, b.x).dtype) or jnp.zeros(()))(
      params, episode.support)
  assert seen == [jnp.bfloat16]
  # Meta-learning keeps the parameters, the optimizer state and the gradient in float32, and
  # the meta-gradient points where the float32 one does.
  learner = mj.meta_learner(bf16, optax.adam(1e-3), inner_steps=2, inner_lr=0.01,
                            meta_batch_size=4)
  state, _ = learner.step(learner.init(params, key=jax.random.key(0)), tasks)
  assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))} <= {
      jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
  g16 = meta_grad_fn(bf16, False, steps=2)(params, tasks)
  g32 = meta_grad_fn(f32, False, steps=2)(params, tasks)
  a, b = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)]) for g in (g16, g32))
  assert a.dtype == jnp.float32
  assert float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b))) > 0.99
  with pytest.raises(ValueError, match="compute dtype must be floating"):
    mj.mixed_precision(f32, jnp.int32)

"""Step time of every balancing method relative to equal weighting, for 2, 10 and 50 tasks.

  .venv/bin/python -m benchmarks.mtl_speed [--tasks 2 10 50] [--steps 50]

The model: a shared 2-layer ReLU MLP (256 units, 64 inputs) and a linear head per task, 32
examples per task, Adam; each method's multi-task step (mj.mtl.multitask_trainer) runs
`steps` steps in one jitted call, timed after a warm-up call, methods interleaved over
`--repeats` rounds (the median is kept) so that machine noise hits every method alike.
Gradient methods should cost at most about (tasks + 1) times equal weighting (T backward
passes plus the combination), loss-only methods about 1x.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtpjax as mj


def trainer_for(name, num_tasks, steps):
  net = mj.mlp((256, 256))
  head = mj.linear_head(1)
  x0 = jnp.zeros((32, 64))
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"shared": net.init(k1, x0),
            "head": jax.vmap(lambda k: head.init(k, jnp.zeros((32, 256))))(
                jax.random.split(k2, num_tasks))}

  def loss_fn(p, batch):
    x, y = batch
    return mj.mse(head.apply(p["head"], net.apply(p["shared"], x))[:, 0], y)

  def sample(key):
    kx, ky = jax.random.split(key)
    return (jax.random.normal(kx, (num_tasks, 32, 64)), jax.random.normal(ky, (num_tasks, 32)))

  hp = {"weights": [1.0] * num_tasks} if name == "fixed" else {}
  trainer = mj.mtl.multitask_trainer(loss_fn, optax.adam(1e-3), mj.mtl.get(name, **hp),
                                     num_tasks=num_tasks, sample=sample)
  state = trainer.init(params, key=jax.random.key(1))
  state, _ = trainer.run(state, steps)  # compile and warm up
  jax.block_until_ready(state)
  return trainer, state


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 50])
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  names = sorted(mj.mtl.METHODS)
  print(f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}; ms per step, and "
        f"relative to equal")
  print(f"{'method':12s} " + " ".join(f"{f'T={t}':>18s}" for t in args.tasks))
  table = {n: [] for n in names}
  for t in args.tasks:
    runs = {n: list(trainer_for(n, t, args.steps)) for n in names}
    times = {n: [] for n in names}
    for _ in range(args.repeats):
      for n in names:
        trainer, state = runs[n]
        t0 = time.perf_counter()
        state, _ = trainer.run(state, args.steps)
        jax.block_until_ready(state)
        times[n].append((time.perf_counter() - t0) / args.steps)
        runs[n][1] = state
    base = np.median(times["equal"])
    for n in names:
      ms = np.median(times[n])
      table[n].append((1000 * ms, ms / base))
  for n in names:
    print(f"{n:12s} " + " ".join(f"{ms:8.2f} ({r:5.2f}x)" for ms, r in table[n]))


if __name__ == "__main__":
  main()

"""Speed: mtpjax's MAML sinusoid meta-step against a minimal hand-written jitted JAX step.

Same model (MLP 1-40-40-1, ReLU), same protocol (25 tasks x 10 support + 10 query points,
1 inner SGD step at lr 0.01, second order, Adam 1e-3), tasks drawn on the device inside the
step in both. The two are timed alternately in one process, several rounds each. Load on a
shared machine drifts over a run, so the headline figure is the median of the per-round
ratios (each round times both back to back); the ratio of the medians is printed beside it.

Also timed, once per round: the experiment script itself with its defaults
(`.venv/bin/python -m experiments.sinusoid`, only --cli_steps meta-steps), by the meta-steps/s it
reports (compilation excluded; its logging and checkpoints included).

  .venv/bin/python -m benchmarks.sinusoid_speed [--steps 2000] [--rounds 5] [--cli_steps 10000] [--out DIR]
"""

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import mtpjax as mj
from benchmarks import script_steps_per_sec

SHOTS, TASKS, INNER_LR, OUTER_LR = 10, 25, 0.01, 1e-3


def hand_written_step():
  """What a user would write by hand: list-of-layers MLP, MAML with jax.grad, optax Adam."""

  def init(key):
    sizes = [1, 40, 40, 1]
    keys = jax.random.split(key, len(sizes) - 1)
    return [(jax.random.normal(k, (i, o)) * jnp.sqrt(1.0 / i), jnp.zeros(o))
            for k, i, o in zip(keys, sizes[:-1], sizes[1:])]

  def forward(params, x):
    for w, b in params[:-1]:
      x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b

  def loss(params, x, y):
    return jnp.mean((forward(params, x) - y) ** 2)

  def sample(key):
    k1, k2, k3 = jax.random.split(key, 3)
    amp = jax.random.uniform(k1, (), minval=0.1, maxval=5.0)
    phase = jax.random.uniform(k2, (), minval=0.0, maxval=jnp.pi)
    x = jax.random.uniform(k3, (2 * SHOTS, 1), minval=-5.0, maxval=5.0)
    return x, amp * jnp.sin(x - phase)

  def task_loss(params, x, y):
    g = jax.grad(loss)(params, x[:SHOTS], y[:SHOTS])
    fast = jax.tree.map(lambda p, g: p - INNER_LR * g, params, g)
    return loss(fast, x[SHOTS:], y[SHOTS:])

  opt = optax.adam(OUTER_LR)

  @jax.jit
  def step(params, opt_state, key, i):
    xs, ys = jax.vmap(sample)(jax.random.split(jax.random.fold_in(key, i), TASKS))
    meta_loss = lambda p: jnp.mean(jax.vmap(task_loss, in_axes=(None, 0, 0))(p, xs, ys))
    l, g = jax.value_and_grad(meta_loss)(params)
    updates, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, l

  params = init(jax.random.key(0))
  state = [params, opt.init(params)]
  key = jax.random.key(1)

  def run(n):
    p, o = state
    for i in range(n):
      p, o, l = step(p, o, key, i)
    jax.block_until_ready(l)
    state[:] = [p, o]

  return run


def library_step():
  family = mj.tasks.sinusoid.family(SHOTS, SHOTS)
  model = mj.compose(mj.mlp((40, 40)), mj.linear_head(1))
  params = model.init(jax.random.key(0), jnp.zeros((SHOTS, 1)))
  learner = mj.meta_learner(mj.supervised(model.apply, mj.mse), optax.adam(OUTER_LR),
                            algorithm="maml", inner_steps=1, inner_lr=INNER_LR,
                            meta_batch_size=TASKS, sample=family.sample)
  box = [learner.init(params, key=jax.random.key(1))]

  def run(n):
    s = box[0]
    for _ in range(n):
      s, m = learner.step(s)
    jax.block_until_ready(m)
    box[0] = s

  return run


def timed(run, steps):
  t = time.perf_counter()
  run(steps)
  return steps / (time.perf_counter() - t)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=1000, help="meta-steps per timed round")
  ap.add_argument("--rounds", type=int, default=11)
  ap.add_argument("--cli_steps", type=int, default=10_000,
                  help="meta-steps of each round's run of the experiment script with its "
                       "defaults (.venv/bin/python -m experiments.sinusoid); 0 leaves it out")
  ap.add_argument("--out", default=None, help="directory for speed.json")
  args = ap.parse_args()
  steps = {"hand_written_jax": hand_written_step(), "mtpjax": library_step()}
  for run in steps.values():  # compile and warm up
    run(50)
  # Each contender: () -> meta-steps/s of one round.
  runs = {name: (lambda run=run: timed(run, args.steps)) for name, run in steps.items()}
  if args.cli_steps:  # the script with its defaults, only num_steps shortened
    runs["experiment_cli"] = lambda: script_steps_per_sec(
        "experiments.sinusoid", f"--config.num_steps={args.cli_steps}")
  rates = {name: [] for name in runs}
  for _ in range(args.rounds):
    for name, run in runs.items():
      rates[name].append(run())
  med = {name: statistics.median(r) for name, r in rates.items()}
  paired = [a / b for a, b in zip(rates["mtpjax"], rates["hand_written_jax"])]
  ratio = statistics.median(paired)
  if args.cli_steps:
    cli = [a / b for a, b in zip(rates["experiment_cli"], rates["hand_written_jax"])]
    print(f"  experiment script (defaults, {args.cli_steps} steps) / hand-written: median of "
          f"per-round ratios {statistics.median(cli):.3f}, rounds "
          + " ".join(f"{r:.2f}" for r in cli))
  result = {"backend": jax.default_backend(), "jax_version": jax.__version__,
            "devices": str(jax.devices()), "steps_per_round": args.steps,
            "rounds": args.rounds, "meta_steps_per_sec": rates,
            "median_meta_steps_per_sec": med, "per_round_ratios": paired,
            "ratio_mtpjax_over_hand_written": ratio,
            "ratio_of_medians": med["mtpjax"] / med["hand_written_jax"]}
  if args.cli_steps:
    result.update(cli_steps=args.cli_steps, per_round_cli_ratios=cli,
                  ratio_cli_over_hand_written=statistics.median(cli))
  print(f"backend {result['backend']}, jax {jax.__version__}, {args.rounds} rounds x {args.steps} steps")
  for name in runs:
    print(f"  {name:18s} median {med[name]:8.1f} meta-steps/s   rounds "
          + " ".join(f"{r:.0f}" for r in rates[name]))
  print("  per-round ratios " + " ".join(f"{r:.2f}" for r in paired))
  print(f"  ratio mtpjax / hand-written: median of per-round ratios {ratio:.3f}, ratio of "
        f"medians {result['ratio_of_medians']:.3f} (target >= 0.90)")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "speed.json"), "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()

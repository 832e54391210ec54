"""Every balancing method on the two-objective toy problem (CAGrad, Nash-MTL, FAMO).

  .venv/bin/python -m benchmarks.mtl_toy [--out runs/mtl_toy] [--steps 35000]

From the five published starts, 35,000 Adam steps at lr 1e-3 on x (task 1's loss scaled by
0.1), each method with its defaults (FAMO with the losses' lower bounds and gamma = 0, as its
authors' toy; fixed with weights 1, 1). Prints which starts reach the Pareto set and saves two plots: the
trajectories in parameter space and in loss space, one panel per method.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtpjax as mj

# FAMO as its authors' toy runs it: the losses' lower bounds, and no decay of the logits
# ("a very small gamma as the objective is not changing"; with the default 1e-3, L2 decay
# keeps starts (-8.5, 7.5) and (9, 9) off the Pareto set within 35,000 steps).
HYPERPARAMETERS = {"famo": {"min_losses": [-2.1, -21.0], "gamma": 0.0},
                   "fixed": {"weights": [1.0, 1.0]}}


def toy_trajectories(balancer: mj.mtl.Balancer, starts=mj.tasks.toy.STARTS, *, steps: int = 35_000,
                     lr: float = 1e-3, scale: float = 0.1, every: int = 50,
                     key=None):
  """Runs `balancer` with Adam from every start: (xs [starts, steps/every + 1, 2],
  losses [starts, steps/every + 1, 2]), recorded every `every` steps, in one jitted scan.

  Example (35,000 steps from 5 starts: a benchmark, not a doctest):
  xs, ls = toy_trajectories(mj.mtl.get("cagrad", c=0.4))
  """
  if steps % every:
    raise ValueError(f"toy_trajectories: every ({every}) must divide steps ({steps})")
  key = jax.random.key(0) if key is None else key
  opt = optax.adam(lr)
  jac = jax.jacrev(lambda x: mj.tasks.toy.toy_losses(x, scale))

  def one_step(carry, _):
    x, opt_state, bstate, k = carry
    k, sub = jax.random.split(k)
    losses = mj.tasks.toy.toy_losses(x, scale)
    grads, bstate, _ = balancer.update(losses, jac(x), bstate, sub)  # jac: [2 tasks, 2]
    updates, opt_state = opt.update(grads, opt_state, x)
    return (optax.apply_updates(x, updates), opt_state, bstate, k), None

  def record(carry, _):
    carry, _ = jax.lax.scan(one_step, carry, None, length=every)
    return carry, (carry[0], mj.tasks.toy.toy_losses(carry[0], scale))

  @jax.jit
  def run(x0, k):
    carry = (x0, opt.init(x0), balancer.init(2), k)
    _, (xs, ls) = jax.lax.scan(record, carry, None, length=steps // every)
    return jnp.concatenate([x0[None], xs]), jnp.concatenate([mj.tasks.toy.toy_losses(x0, scale)[None], ls])

  starts = jnp.asarray(starts, jnp.float32)
  return jax.vmap(run)(starts, jax.random.split(key, starts.shape[0]))


def run_all(steps: int, every: int) -> dict:
  out = {}
  for name in sorted(mj.mtl.METHODS):
    t0 = time.perf_counter()
    xs, losses = toy_trajectories(mj.mtl.get(name, **HYPERPARAMETERS.get(name, {})),
                                         steps=steps, every=every)
    xs, losses = np.asarray(xs), np.asarray(losses)
    reached = np.asarray(mj.tasks.toy.on_pareto_set(xs[:, -1])) & np.all(np.isfinite(xs[:, -1]), -1)
    out[name] = {"xs": xs, "losses": losses, "reached": reached.tolist(),
                 "seconds": time.perf_counter() - t0}
    ends = ", ".join("diverged" if not np.all(np.isfinite(e)) else f"({e[0]:.2f}, {e[1]:.2f})"
                     for e in xs[:, -1])
    print(f"{name:12s} reached {int(reached.sum())}/5  ends {ends}", flush=True)
  return out


def plot(runs: dict, path_x: str, path_l: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = sorted(runs)
  cols = 5
  rows = -(-len(names) // cols)
  grid = np.linspace(-10, 10, 201)
  g1, g2 = np.meshgrid(grid, grid)
  pts = jnp.stack([g1.ravel(), g2.ravel()], -1)
  total = np.asarray(jax.vmap(lambda x: jnp.sum(mj.tasks.toy.toy_losses(x)))(pts)).reshape(g1.shape)
  x1 = np.linspace(-7, 7, 101)
  front_x2 = np.asarray(mj.tasks.toy.pareto_x2(jnp.asarray(x1)))
  front_l = np.asarray(jax.vmap(mj.tasks.toy.toy_losses)(jnp.stack([jnp.asarray(x1), front_x2], -1)))
  colors = plt.cm.tab10(np.arange(5))
  for space, path in (("x", path_x), ("loss", path_l)):
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
      r = runs[name]
      if space == "x":
        ax.contour(g1, g2, total, levels=20, linewidths=0.4, colors="0.7")
        ax.plot(x1, front_x2, "k", lw=3, alpha=0.6)
        for i, traj in enumerate(r["xs"]):
          ax.plot(traj[:, 0], traj[:, 1], color=colors[i], lw=1)
          ax.plot(*traj[0], "o", color=colors[i], ms=3)
          ax.plot(*traj[-1], "*" if r["reached"][i] else "x", color=colors[i], ms=7)
        ax.set(xlim=(-10, 10), ylim=(-10, 10))
      else:
        ax.plot(front_l[:, 0], front_l[:, 1], "k", lw=3, alpha=0.6)
        for i, traj in enumerate(r["losses"]):
          ax.plot(traj[:, 0], traj[:, 1], color=colors[i], lw=1)
          ax.plot(*traj[-1], "*" if r["reached"][i] else "x", color=colors[i], ms=7)
        ax.set(xlabel="L1 (x0.1)", ylabel="L2")
      ax.set_title(f"{name}: {sum(r['reached'])}/5", fontsize=9)
    for ax in axes.ravel()[len(names):]:
      ax.axis("off")
    fig.suptitle("toy problem: trajectories from the 5 published starts (black: Pareto set; "
                 "* reached, x not)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/mtl_toy")
  parser.add_argument("--steps", type=int, default=35_000)
  parser.add_argument("--every", type=int, default=100, help="record a point every N steps")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  runs = run_all(args.steps, args.every)
  summary = {n: {"reached": r["reached"], "end": r["xs"][:, -1].tolist(),
                 "seconds": r["seconds"]} for n, r in runs.items()}
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"steps": args.steps, "starts": mj.tasks.toy.STARTS, "methods": summary,
               "backend": jax.default_backend(), "jax_version": jax.__version__}, f, indent=1)
  px, pl = (os.path.join(args.out, f) for f in ("toy_x.png", "toy_losses.png"))
  plot(runs, px, pl)
  print(f"wrote {px}, {pl}")


if __name__ == "__main__":
  main()

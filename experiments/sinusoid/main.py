"""Sinusoid regression benchmark: meta-train, evaluate on 600 fresh tasks, plot.

  .venv/bin/python -m experiments.sinusoid --workdir runs/sinusoid [--config.algorithm=cavia ...]

See experiments/sinusoid/config.py for the protocol and every field.
"""


import jax
import jax.numpy as jnp
import numpy as np

import mtpjax as mj
from experiments import _lib
from experiments.sinusoid import config as config_lib
from experiments._lib import env

EVAL_SEED_OFFSET = 10_007  # evaluation tasks are drawn from their own key, never from training's


def build_model(config):
  if config.context_dim < 0:
    raise ValueError(f"config.context_dim must be >= 0, got {config.context_dim}")
  needs_prompt = config.algorithm in ("cavia", "prompt_maml")
  if needs_prompt and config.context_dim == 0:
    raise ValueError(f"config.algorithm={config.algorithm!r} adapts only the prompt: "
                     "config.context_dim must be > 0")
  prompt = mj.context_prompt(config.context_dim) if config.context_dim else None
  backbone = mj.mlp(tuple(config.hidden), context_dim=config.context_dim,
                    context_mode=config.context_mode, kernel_init=config.kernel_init)
  return mj.compose(backbone, mj.linear_head(1, kernel_init=config.kernel_init), prompt)


def build(config, optimizer) -> _lib.Experiment:
  if config.shots <= 0 or config.train_queries <= 0 or config.eval_queries <= 0:
    raise ValueError("config.shots, config.train_queries and config.eval_queries must be > 0, got "
                     f"{config.shots}, {config.train_queries}, {config.eval_queries}")
  train = mj.tasks.sinusoid.family(config.shots, config.train_queries)
  test = mj.tasks.sinusoid.family(config.shots, config.eval_queries)
  model = build_model(config)
  params = model.init(jax.random.key(config.seed), jnp.zeros((config.shots, 1)))
  loss_fn = mj.supervised(model.apply, mj.mse)
  mesh = env.mesh_from_env(config.meta_batch_size, "config.meta_batch_size")
  learner = mj.meta_learner(loss_fn, optimizer, algorithm=config.algorithm,
                            inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                            meta_batch_size=config.meta_batch_size, sample=train.sample,
                            mesh=mesh)
  eval_key = jax.random.key(config.seed + EVAL_SEED_OFFSET)

  def evaluate(params):
    res = mj.evaluate(learner, params, test.sample, key=eval_key, num_tasks=config.eval_tasks,
                      inner_steps=config.eval_inner_steps)
    rows = _lib.eval_rows(res, metric_names={"loss": "mse"}, setting=f"{config.shots}-shot")
    return rows, res

  def plot(workdir, params, history, res):
    return make_plots(workdir, config, model, learner, test, params, history, res, eval_key)

  return _lib.Experiment("sinusoid", learner, params, evaluate, plot, mesh=mesh)


def make_plots(workdir, config, model, learner, test, params, history, res, eval_key):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  paths = _lib.plot_training_curve(
      workdir, history, metric="MSE",
      title=f"sinusoid {config.shots}-shot, {config.algorithm}: meta-training")
  # 2. MSE against inner steps, with the 95% interval.
  mean, ci = res.curve("loss")
  fig, ax = plt.subplots(figsize=(6, 4))
  xs = np.arange(len(mean))
  ax.plot(xs, mean, marker="o")
  ax.fill_between(xs, mean - ci, mean + ci, alpha=0.3)
  ax.set(xlabel="inner gradient steps", ylabel="query MSE", yscale="log",
         title=f"{config.algorithm}, {config.shots}-shot: {res.per_task['loss'].shape[0]} test tasks")
  paths.append(_lib.save_figure(fig, workdir, "mse_vs_inner_steps.png"))

  # 3. Fitted curves before and after adaptation (MAML's Figure 2), on the first test tasks.
  grid = jnp.linspace(-5.0, 5.0, 200)[:, None]
  steps_to_show = sorted({0, 1, max(config.eval_inner_steps)})
  n = config.plot_tasks
  keys = jax.random.split(eval_key, n)
  fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.5), squeeze=False)
  for ax, key in zip(axes[0], keys):
    amp, phase = test.task_params(jax.random.split(key)[0])
    ep = test.sample(key)
    ax.plot(grid[:, 0], amp * jnp.sin(grid[:, 0] - phase), "k", lw=2, label="true")
    for s in steps_to_show:
      adapted, _ = learner.adapt(params, ep.support, steps=s)
      ax.plot(grid[:, 0], model.apply(adapted, grid)[:, 0], "--", label=f"{s} steps")
    ax.scatter(ep.support.x[:, 0], ep.support.y[:, 0], c="r", marker="^", zorder=3,
               label=f"{config.shots} support points")
    ax.set_title(f"A={float(amp):.2f}, phase={float(phase):.2f}")
  axes[0][0].legend(fontsize=7)
  fig.suptitle(f"{config.algorithm}: fits after adapting on {config.shots} points")
  paths.append(_lib.save_figure(fig, workdir, "fits.png"))
  return paths


def cli():
  """python -m experiments.sinusoid --workdir DIR [--config.FIELD=VALUE ...]."""
  _lib.main(config_lib, build)


if __name__ == "__main__":
  cli()

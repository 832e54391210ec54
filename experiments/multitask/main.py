"""Multi-task learning with balancing methods on tasks of controlled correlation.

  .venv/bin/python -m experiments.multitask --workdir runs/mtl/famo --config.method=famo

See experiments/multitask/config.py for the protocol and every field; the table over methods,
architectures, correlations and seeds (with Δm) is `python -m benchmarks.multitask_table`.
"""

import jax
import jax.numpy as jnp
import numpy as np

import mtpjax as mj
from experiments import _lib
from experiments.multitask import config as config_lib
from experiments._lib import env

NUM_TASKS = 2
SPLIT_SEED_OFFSET = {"train": 1, "val": 2, "test": 3}  # one weights key, one data key per split


def build_model(config):
  prompt = mj.prompts.context(config.prompt_dim) if config.prompt_dim else None
  kw = dict(prompt=prompt, context_dim=config.prompt_dim, context_mode="film")
  if config.arch == "mmoe":
    return mj.mtl.mmoe(config.experts, config.expert, config.tower, 1, **kw)
  return mj.mtl.shared_bottom(config.bottom, config.tower, 1, **kw)


def data(config):
  """Train, validation and test sets of one problem (the same task weights)."""
  w_key = jax.random.key(config.seed)
  return {split: mj.tasks.correlated.make(
      jax.random.fold_in(w_key, off), correlation=config.correlation, dim=config.dim,
      num_examples=config[f"{split}_examples"], weights_key=w_key)
      for split, off in SPLIT_SEED_OFFSET.items()}


def build(config, optimizer) -> _lib.Experiment:
  model = build_model(config)
  sets = data(config)
  train = sets["train"]
  single = config.method == "single_task"
  per_task = ("shared", "head", "prompt") if single else ("head", "prompt")
  balancer = mj.mtl.get("equal" if single else config.method,
                        **config_lib.parse_hyperparameters(config.hyperparameters))
  # One initialisation per task, stacked; multi-task models keep task 0's shared roles.
  keys = jax.random.split(jax.random.key(config.seed + 100), NUM_TASKS)
  stacked = jax.jit(jax.vmap(lambda k: model.init(k, train.x[:2])))(keys)
  params = {r: (v if r in per_task else jax.tree.map(lambda a: a[0], v))
            for r, v in stacked.items()}

  def loss_fn(p, batch):
    x, y = batch
    return mj.mse(model.apply(p, x)[:, 0], y)

  def sample(key):
    idx = jax.random.randint(key, (config.batch_size,), 0, train.x.shape[0])
    x = jnp.broadcast_to(train.x[idx], (NUM_TASKS, config.batch_size, config.dim))
    return x, train.y[:, idx]                                   # [T, b, d], [T, b]

  mesh = env.mesh_from_env(NUM_TASKS, "the task count")
  trainer = mj.mtl.multitask_trainer(loss_fn, optimizer, balancer, num_tasks=NUM_TASKS,
                                     per_task=per_task, sample=sample, mesh=mesh)

  @jax.jit
  def task_mse(params, x, y):  # [T]: each task's MSE on the whole set
    return jax.vmap(lambda t, yt: loss_fn(trainer.task_params(params, t), (x, yt)))(
        jnp.arange(NUM_TASKS), y)

  def evaluate(params):
    rows = []
    for split in ("val", "test"):
      mse = np.asarray(task_mse(params, sets[split].x, sets[split].y))
      for t in range(NUM_TASKS):
        rows.append({"method": config.method, "arch": config.arch,
                     "correlation": config.correlation, "seed": config.seed, "split": split,
                     "task": t, "mse": float(mse[t])})
    return rows, None

  label_corr = float(np.corrcoef(np.asarray(train.y))[0, 1])
  shared_count = sum(int(np.prod(a.shape[1:] if "shared" in per_task else a.shape))
                     for a in jax.tree.leaves(params.get("shared", {})))
  facts = {"label_correlation": label_corr, "shared_parameters": shared_count,
           "parameters": sum(int(a.size) for a in jax.tree.leaves(params))}

  def plot(workdir, params, history, extras):
    del params, extras
    return make_plots(workdir, config, history)

  return _lib.Experiment("multitask_synthetic", trainer, params, evaluate, plot, mesh=mesh,
                           facts=facts)


def make_plots(workdir, config, history):
  return _lib.plot_task_curves(
      workdir, history, loss_label="training MSE",
      title=f"{config.method}, {config.arch}, correlation {config.correlation}")


def cli():
  """python -m experiments.multitask --workdir DIR [--config.FIELD=VALUE ...]."""
  _lib.main(config_lib, build,
              algorithms=config_lib.METHODS, meta=False)


if __name__ == "__main__":
  cli()

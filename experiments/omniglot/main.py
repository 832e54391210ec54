"""Omniglot few-shot classification: meta-train on the MAML split, evaluate 600 test episodes.

  .venv/bin/python -m experiments.omniglot --workdir runs/omniglot_maml [--config.algorithm=protonet ...]

See experiments/omniglot/config.py for the protocol and every field. Data: omniglot28.npz
from config.data_path, else $MTPJAX_DATA_DIR, else ../shared/data beside the checkout.
"""


import jax
import jax.numpy as jnp
import numpy as np

import mtpjax as mj
from experiments import _lib
from experiments.omniglot import config as config_lib
from experiments._lib import env

EVAL_SEED_OFFSET = 10_007  # test episodes come from their own key, never from training's


def load_split(config):
  data = mj.tasks.omniglot.load_npz(config.data_path or env.data_file(mj.tasks.omniglot.NPZ_NAME))
  n = data["images"].shape[0]
  if not 0 < config.num_train_characters < n:
    raise ValueError(f"config.num_train_characters={config.num_train_characters} must be in "
                     f"(0, {n}): the data holds {n} characters and the test split needs the "
                     f"rest")
  split = mj.tasks.omniglot.maml_split(data, seed=config.split_seed,
                                       num_train=config.num_train_characters)
  to_float = lambda a: jnp.asarray(a, jnp.float32) / 255.0
  return to_float(split["train"]), to_float(split["test"]), split


def build_model(config):
  needs_prompt = config.algorithm in ("cavia", "prompt_maml")
  if config.context_dim < 0 or (needs_prompt and config.context_dim == 0):
    raise ValueError(f"config.context_dim must be > 0 for {config.algorithm!r} (it adapts only "
                     f"the context prompt) and >= 0 otherwise, got {config.context_dim}")
  backbone = mj.conv4(filters=config.filters, norm=config.norm, groups=config.norm_groups,
                      conv_impl=config.conv_impl,
                      context_dim=config.context_dim, context_layer=config.context_layer)
  if config.algorithm == "protonet":  # the Conv4 features are the embedding: no head
    return mj.compose(backbone)
  prompt = mj.context_prompt(config.context_dim) if config.context_dim else None
  return mj.compose(backbone, mj.linear_head(config.ways), prompt)


def build(config, optimizer) -> _lib.Experiment:
  for name in ("ways", "shots", "train_queries", "eval_queries", "eval_batch_size"):
    if config[name] <= 0:
      raise ValueError(f"config.{name} must be > 0, got {config[name]}")
  train, test, _ = load_split(config)
  settings = _lib.parse_settings(config.eval_settings, test.shape[0])
  if config.algorithm != "protonet" and any(w != config.ways for w, _ in settings):
    raise ValueError(f"config.eval_settings {list(config.eval_settings)}: a {config.ways}-way "
                     f"model (config.ways) has a {config.ways}-way head and can only be tested "
                     f"on {config.ways}-way episodes (ProtoNet can be tested on any)")
  family = mj.tasks.classification.episodes(train, ways=config.ways, shots=config.shots,
                                            queries=config.train_queries, name="meta-train classes")
  model = build_model(config)
  params = model.init(jax.random.key(config.seed), jnp.zeros((config.ways, 28, 28)))
  protonet = config.algorithm == "protonet"
  if protonet:
    pn = mj.protonet(model.apply, config.ways)
    loss_fn, acc_fn, task_repr = pn.loss_fn, pn.accuracy_fn, pn.task_repr
    algorithm = "maml"  # zero inner steps: the meta-gradient flows through the prototypes
  else:
    loss_fn = mj.supervised(model.apply, mj.cross_entropy)
    acc_fn, task_repr, algorithm = mj.supervised(model.apply, mj.accuracy), None, config.algorithm
  if config.zero_head:
    if protonet:
      raise ValueError("config.zero_head: ProtoNet has no head to reset")
    try:
      algorithm = mj.get_algorithm(config.algorithm, reset=(mj.HEAD,))
    except ValueError as e:
      raise ValueError(f"config.zero_head with algorithm {config.algorithm!r}: {e}") from None
  mesh = env.mesh_from_env(config.meta_batch_size, "config.meta_batch_size")
  learner = mj.meta_learner(loss_fn, optimizer, algorithm=algorithm,
                            inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                            meta_batch_size=config.meta_batch_size, sample=family.sample,
                            task_repr=task_repr, mesh=mesh)
  eval_key = jax.random.key(config.seed + EVAL_SEED_OFFSET)
  eval_steps = (0,) if protonet else tuple(config.eval_inner_steps)

  def test_family(ways, shots):
    return mj.tasks.classification.episodes(test, ways=ways, shots=shots,
                                            queries=config.eval_queries, name="test classes")

  def learner_for(ways):
    if ways == config.ways:
      return learner, loss_fn, acc_fn
    # Only ProtoNet gets here (build checks): prototypes serve any number of ways.
    pn_w = mj.protonet(model.apply, ways)
    lrn = mj.meta_learner(pn_w.loss_fn, optimizer, algorithm="maml", inner_steps=0,
                          inner_lr=config.inner_lr, meta_batch_size=1, task_repr=pn_w.task_repr)
    return lrn, pn_w.loss_fn, pn_w.accuracy_fn

  def evaluate(params):
    rows, results = [], {}
    for ways, shots in settings:
      lrn, lf, af = learner_for(ways)
      res = mj.evaluate(lrn, params, test_family(ways, shots).sample, key=eval_key,
                        num_tasks=config.eval_tasks, inner_steps=eval_steps,
                        metrics={"accuracy": af, "loss": lf}, batch_size=config.eval_batch_size)
      setting = f"{ways}-way {shots}-shot"
      rows += _lib.eval_rows(res, metric_names={"accuracy": "accuracy", "loss": "loss"},
                               setting=setting)
      results[setting] = res
    return rows, results

  def plot(workdir, params, history, results):
    return make_plots(workdir, config, model, learner, test_family, settings[0], params,
                      history, results, eval_key, protonet)

  name = f"omniglot {config.ways}-way {config.shots}-shot"
  return _lib.Experiment(name, learner, params, evaluate, plot, mesh=mesh)


def make_plots(workdir, config, model, learner, test_family, shown, params, history, results,
               eval_key, protonet):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  # The run's name in titles; a norm other than the default is part of it (as in the table).
  name = config.algorithm + ("" if config.norm == "group" else f", norm={config.norm}")
  paths = _lib.plot_training_curve(
      workdir, history, metric="cross-entropy",
      title=f"Omniglot {config.ways}-way {config.shots}-shot, {name}")
  # 2. Accuracy against inner steps, one line per test setting, with the 95% interval; not
  # for one inner-step count (ProtoNet): a plot of one point says nothing.
  if max(len(res.curve("accuracy")[0]) for res in results.values()) > 1:
    fig, ax = plt.subplots(figsize=(6, 4))
    for setting, res in results.items():
      mean, ci = res.curve("accuracy")
      xs = np.arange(len(mean))
      ax.errorbar(xs, 100 * mean, yerr=100 * ci, marker="o", capsize=3, label=setting)
      ax.set_xticks(xs)
    ax.set(xlabel="inner gradient steps",
           ylabel="test accuracy (%)",
           title=f"{name}\n{config.eval_tasks} test episodes per setting, 95% CI")
    ax.legend()
    paths.append(_lib.save_figure(fig, workdir, "accuracy_vs_inner_steps.png"))

  # 3. One test episode: its support images, and its query images with the predictions.
  ways, shots = shown  # the episode shown: (ways, shots) of the first test setting
  episode = test_family(ways, shots).sample(jax.random.split(eval_key, config.eval_tasks)[0])
  steps = max(results[f"{ways}-way {shots}-shot"].inner_steps)
  kw = {}
  if learner.task_repr is not None:
    kw["task_repr"] = learner.task_repr(params, episode.support)
  adapted, _ = learner.adapt(params, episode.support, steps=steps, first_order=True)
  if protonet:
    logits = mj.protonet(model.apply, ways).logits(adapted, episode.query.x, kw["task_repr"])
  else:
    logits = model.apply(adapted, episode.query.x)
  pred = np.asarray(jnp.argmax(logits, axis=-1))
  qx, qy = np.asarray(episode.query.x), np.asarray(episode.query.y)
  sx, sy = np.asarray(episode.support.x), np.asarray(episode.support.y)
  cols = max(shots, min(config.eval_queries, 8))
  fig, axes = plt.subplots(ways, shots + cols + 1, figsize=(1.1 * (shots + cols + 1), 1.2 * ways),
                           squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for c in range(ways):
    for j, img in enumerate(sx[sy == c][:shots]):
      axes[c][j].imshow(img, cmap="gray_r")
      axes[c][j].set_title(f"class {c}" if j == 0 else "", fontsize=7)
    for j, (img, p) in enumerate(zip(qx[qy == c][:cols], pred[qy == c][:cols])):
      ax = axes[c][shots + 1 + j]
      ax.imshow(img, cmap="gray_r")
      ax.set_title(f"pred {p}", fontsize=7, color="green" if p == c else "red")
  acc = float(np.mean(pred == qy))
  fig.suptitle(f"{name}, {ways}-way {shots}-shot, {steps} inner steps: support "
               f"(left) and queries with predictions (right); episode accuracy {100 * acc:.0f}%",
               fontsize=8)
  paths.append(_lib.save_figure(fig, workdir, "episode_predictions.png"))
  return paths


def cli():
  """python -m experiments.omniglot --workdir DIR [--config.FIELD=VALUE ...]."""
  _lib.main(config_lib, build, config_lib.ALGORITHMS)


if __name__ == "__main__":
  cli()

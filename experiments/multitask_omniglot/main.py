"""Multi-task image classification on Omniglot's alphabets: a shared Conv4, per-alphabet heads
and FiLM prompts, any balancing method.

  .venv/bin/python -m experiments.multitask_omniglot --workdir runs/mtl_omniglot/famo --config.method=famo

See experiments/multitask_omniglot/config.py for the protocol and every field.
"""

import jax
import jax.numpy as jnp
import numpy as np

import mtpjax as mj
from experiments import _lib
from experiments._lib import config as config_common
from experiments.multitask_omniglot import config as config_lib
from mtpjax.tasks import omniglot
from experiments._lib import env

S, H, P = mj.SHARED, mj.HEAD, mj.PROMPT


def alphabets(config, data) -> list:
  background = sorted(set(data["alphabet"][:data["num_background"]].tolist()))
  if config.alphabets:
    known = set(data["alphabet"].tolist())
    unknown = sorted(set(config.alphabets) - known)
    if unknown:
      raise ValueError(f"config.alphabets: unknown {unknown}; e.g. {background[:3]}")
    return list(config.alphabets)
  if config.num_alphabets > len(background) or config.num_alphabets < 2:
    raise ValueError(f"config.num_alphabets must be in [2, {len(background)}], got "
                     f"{config.num_alphabets}")
  return background[:config.num_alphabets]


def build(config, optimizer) -> _lib.Experiment:
  data = omniglot.load_npz(config.data or env.data_file(omniglot.NPZ_NAME))
  names = alphabets(config, data)
  T = len(names)
  chars = [np.flatnonzero(data["alphabet"] == a) for a in names]
  ways = max(len(c) for c in chars)

  def split_arrays(split):
    """x [T, N_max, 28, 28, 1] float, y [T, N_max], n [T]: each alphabet's drawings of the
    split, padded to the largest alphabet's count (padding is never sampled or scored)."""
    lo, hi = config_lib.SPLIT[split]
    xs, ys = [], []
    for c in chars:
      img = data["images"][c, lo:hi]                             # [C_a, d, 28, 28]
      xs.append(img.reshape(-1, 28, 28))
      ys.append(np.repeat(np.arange(len(c)), hi - lo))
    n = np.array([len(y) for y in ys])
    pad = lambda a, m: np.concatenate([a, np.zeros((m - len(a),) + a.shape[1:], a.dtype)])
    x = np.stack([pad(a, n.max()) for a in xs])[..., None].astype(np.float32) / 255.0
    y = np.stack([pad(a, n.max()) for a in ys]).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y), n

  train_x, train_y, n_train = split_arrays("train")
  counts = jnp.asarray([len(c) for c in chars])
  mask = jnp.arange(ways)[None] < counts[:, None]                  # [T, ways] real classes

  prompt = mj.prompts.context(config.prompt_dim) if config.prompt_dim else None
  net = mj.conv4(filters=config.filters, context_dim=config.prompt_dim)
  model = mj.compose(net, mj.linear_head(ways), prompt)
  single = config.method == "single_task"
  per_task = (S, H, P) if single else (H, P)
  keys = jax.random.split(jax.random.key(config.seed), T)
  stacked = jax.jit(jax.vmap(lambda k: model.init(k, jnp.zeros((2, 28, 28, 1)))))(keys)
  params = {r: (v if r in per_task else jax.tree.map(lambda a: a[0], v))
            for r, v in stacked.items()}

  def logits_of(p, x, m):
    return jnp.where(m, model.apply(p, x), -1e9)                   # padded classes masked

  def loss_fn(p, batch):
    x, y, m = batch
    return mj.cross_entropy(logits_of(p, x, m), y)

  n_train_dev = jnp.asarray(n_train)

  def sample(key):
    u = jax.random.uniform(key, (T, config.batch_size))
    rows = jnp.floor(u * n_train_dev[:, None]).astype(jnp.int32)   # within each alphabet
    take = lambda a: jax.vmap(lambda at, r: at[r])(a, rows)
    masks = jnp.broadcast_to(mask[:, None], (T, config.batch_size, ways))
    return take(train_x), take(train_y), masks

  balancer = mj.mtl.get("equal" if single else config.method,
                        **config_common.parse_hyperparameters(config.hyperparameters))
  mesh = env.mesh_from_env(T, "config.alphabets")
  trainer = mj.mtl.multitask_trainer(loss_fn, optimizer, balancer, num_tasks=T,
                                     per_task=per_task, sample=sample, mesh=mesh)
  predict = jax.jit(lambda p, x, m: jnp.argmax(logits_of(p, x, m), -1))
  sets = {s: split_arrays(s) for s in ("val", "test")}

  def evaluate(params):
    rows = []
    for split, (x, y, n) in sets.items():
      for t, name in enumerate(names):
        pred = predict(trainer.task_params(params, t), x[t, :n[t]], mask[t])
        m = mj.mtl.classification_metrics(mj.mtl.confusion_matrix(pred, y[t, :n[t]], ways))
        rows.append({"stage": "multitask", "method": config.method, "seed": config.seed,
                     "split": split, "domain": name, "accuracy": m["accuracy"], "f1": m["f1"]})
    return rows, None

  facts = {"alphabets": names, "characters": [len(c) for c in chars],
           "parameters": int(sum(a.size for a in jax.tree.leaves(params)))}
  def plot(workdir, params, history, extras):
    del params, extras
    return _lib.plot_task_curves(workdir, history, loss_label="training cross-entropy",
                                 title=f"multitask_omniglot, {config.method}")

  return _lib.Experiment("multitask_omniglot", trainer, params, evaluate, plot, facts=facts,
                           mesh=mesh)


def cli():
  """python -m experiments.multitask_omniglot --workdir DIR [--config.FIELD=VALUE ...]."""
  _lib.main(config_lib, build,
              algorithms=config_lib.METHODS, meta=False)


if __name__ == "__main__":
  cli()

"""Multi-task intent classification: CLINC150's domains as tasks, per-domain prompts and heads on
a frozen encoder, any balancing method; then aggregation to held-out domains and distillation.

  .venv/bin/python -m experiments.multitask_intents --workdir runs/mtl_intents/famo --config.method=famo

See experiments/multitask_intents/config.py for the protocol and every field.
"""

import sys
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtpjax as mj
from experiments import _lib
from experiments._lib import config as config_common
from experiments.multitask_intents import config as config_lib
from mtpjax.tasks import text as text_tasks
from experiments._lib import env

S, H, P, PS = mj.SHARED, mj.HEAD, mj.PROMPT, mj.PROMPT_SHARED


def load_sets(config) -> dict:
  path = config.data or env.data_file("clinc150.jsonl")
  with warnings.catch_warnings():  # out-of-scope utterances are left out by design
    warnings.filterwarnings("ignore", message="load_jsonl: left out")
    return {s: text_tasks.load_jsonl(path, splits=(s,)) for s in ("train", "val", "test")}


def domain_split(textset, domain, per_intent=None):
  """(texts, labels) of one domain's intents (labels 0..14 in the set's class order), the
  first `per_intent` utterances of each intent when given."""
  sub = textset.subset(textset.classes_in([domain]))
  keep = np.arange(len(sub.texts))
  if per_intent is not None:
    counts = np.bincount(sub.labels, minlength=len(sub.classes))
    if counts.min() < per_intent:
      raise ValueError(f"domain {domain!r}: an intent has only {counts.min()} utterances in this "
                       f"split, fewer than {per_intent}")
    seen = np.zeros(len(sub.classes), int)
    keep = []
    for i, y in enumerate(sub.labels):  # the file's first per_intent of each intent
      if seen[y] < per_intent:
        keep.append(i)
      seen[y] += 1
  return [sub.texts[i] for i in keep], np.asarray(sub.labels[keep], np.int32), len(sub.classes)


class Featurizer:
  """Token ids and the frozen lower layers' states of a list of texts: the model's input."""

  def __init__(self, enc, config):
    self.enc, self.config = enc, config

  def __call__(self, texts):
    ids = self.enc.tokenize(texts, self.config.max_len)[0]
    lower = mj.pretrained.lower_states(self.enc, ids, self.config.entry_layer, progress=False)
    return {"ids": ids, "lower": lower}


class Domains(NamedTuple):
  """The training domains as tasks: their cached inputs, stacked [T, N, ...], and each one's
  validation and test sets."""

  tasks: list          # domain names, one task each
  train_x: Any         # {"ids", "lower"} leaves [T, N, ...]
  train_y: jax.Array   # [T, N]
  evals: dict          # {"val" | "test": [(x, y) per domain]}
  ways: int            # intents per domain (one head shape)


def load_domains(config, sets, featurize) -> Domains:
  domains = sorted(set(sets["train"].groups))
  unknown = sorted(set(config.heldout_domains) - set(domains))
  if unknown:
    raise ValueError(f"config.heldout_domains: unknown domains {unknown}; the data has {domains}")
  tasks = [x for x in domains if x not in config.heldout_domains]
  if len(tasks) < 2:
    raise ValueError(f"multi-task learning needs >= 2 domains, {tasks} remain after holding out "
                     f"{list(config.heldout_domains)}")
  print(f"computing the frozen layers' states for {len(tasks)} domains", file=sys.stderr)
  train, evals, num_classes = [], {"val": [], "test": []}, set()
  for dom in tasks:
    texts, labels, k = domain_split(sets["train"], dom, config.train_per_intent)
    num_classes.add(k)
    train.append((featurize(texts), labels))
    for split in evals:
      t_texts, t_labels, _ = domain_split(sets[split], dom)
      evals[split].append((featurize(t_texts), t_labels))
  if len(num_classes) != 1:
    raise ValueError(f"every domain needs the same number of intents (one head shape), got "
                     f"{sorted(num_classes)}")
  # [T, N, ...]: every domain has ways * train_per_intent training utterances.
  train_x = jax.tree.map(lambda *a: jnp.asarray(np.stack(a)), *[x for x, _ in train])
  train_y = jnp.asarray(np.stack([y for _, y in train]))
  if config.batch_size > train_y.shape[1]:
    raise ValueError(f"config.batch_size={config.batch_size} exceeds the {train_y.shape[1]} "
                     f"training utterances of a domain")
  return Domains(tasks, train_x, train_y, evals, num_classes.pop())


class _Stages(NamedTuple):
  """What the evaluation stages share: the model, its loss, the trained multi-task trainer's
  slicing, the data, and how a set is scored."""

  config: Any
  sets: dict
  featurize: Any
  data: Domains
  model: mj.Model
  loss_fn: Any
  trainer: Any
  draw: Any
  scores: Any
  single: bool
  key: jax.Array


def full_prompts(stages: _Stages, params):
  """[T, L, d]: each domain's prompt, shared part + own part."""
  ps = params[PS] if stages.single else params[PS][None]
  return ps + params[P]


def aggregation_rows(stages: _Stages, params, val_acc):
  """Each held-out domain's prompt trained from every aggregate of the domains' prompts."""
  config, prompts = stages.config, full_prompts(stages, params)
  inits = {"mean": mj.mtl.aggregate_mean(prompts),
           "weighted_mean": mj.mtl.weighted_mean(prompts, val_acc),
           "mpt": mj.mtl.mpt_decompose(prompts, rank=1).shared,
           "shared_part": jnp.mean(params[PS], 0) if stages.single else params[PS],
           "zero": jnp.zeros_like(prompts[0])}
  rows = []
  for dom in config.heldout_domains:
    texts, labels, k = domain_split(stages.sets["train"], dom, config.transfer_per_intent)
    if k != stages.data.ways:
      raise ValueError(f"held-out domain {dom!r} has {k} intents, the heads {stages.data.ways}")
    x = jax.tree.map(lambda a: jnp.asarray(a)[None], stages.featurize(texts))
    y = jnp.asarray(labels)[None]
    test = domain_split(stages.sets["test"], dom)
    test_x = stages.featurize(test[0])
    b = min(config.batch_size, len(labels))

    def sample_h(key):
      r = jax.random.choice(key, len(labels), (b,), replace=False)
      return jax.tree.map(lambda a: a[:, r], x), y[:, r]

    one = mj.mtl.multitask_trainer(stages.loss_fn, optax.adam(config.outer_lr),
                                   mj.mtl.get("equal"), num_tasks=1, per_task=(H, P),
                                   frozen=(S,), sample=sample_h)
    head0 = jax.tree.map(lambda a: jnp.zeros_like(a[:1]), params[H])  # zero, for every init
    for name, init in inits.items():
      p0 = {S: params[S], PS: init, P: jnp.zeros((1,) + init.shape), H: head0}
      state = one.init(p0, key=jax.random.fold_in(stages.key, 7))
      state, _ = one.run(state, config.transfer_steps)
      m = stages.scores(one.task_params(state.params, 0), test_x, test[1])
      rows.append({"stage": "aggregation", "method": config.method, "seed": config.seed,
                   "split": "test", "domain": dom, "init": name,
                   "accuracy": m["accuracy"], "f1": m["f1"]})
      print(f"aggregation: {dom} from {name}: accuracy {m['accuracy']:.3f}", file=sys.stderr)
  return rows


def distillation_rows(stages: _Stages, params):
  """One prompt for every domain distilled from the per-domain teachers, against the same
  student on hard labels."""
  config, data, model, trainer = stages.config, stages.data, stages.model, stages.trainer
  T = len(data.tasks)
  teacher_logits = jax.jit(jax.vmap(lambda t, xt: model.apply(trainer.task_params(params, t),
                                                              xt)))
  logits = teacher_logits(jnp.arange(T), data.train_x)                  # [T, N, ways]
  rows = []
  for name, alpha in (("distilled", config.alpha), ("hard_labels", 0.0)):
    def student_loss(p, batch, alpha=alpha):
      x, y, t_logits = batch
      return mj.mtl.distillation_loss(model.apply(p, x), t_logits, y,
                                      temperature=config.temperature, alpha=alpha)

    def sample_s(key):
      return stages.draw(key, (data.train_x, data.train_y, logits))

    # The student: one prompt for every domain (the teacher's mean prompt to start; its
    # per-domain part frozen at zero) under the teacher's frozen heads: only the prompt learns.
    student = mj.mtl.multitask_trainer(student_loss, optax.adam(config.outer_lr),
                                       mj.mtl.get("equal"), num_tasks=T, per_task=(H, P),
                                       frozen=(S, H, P), sample=sample_s)
    p0 = {S: params[S], PS: jnp.mean(full_prompts(stages, params), 0),
          P: jnp.zeros_like(params[P]), H: params[H]}
    state = student.init(p0, key=jax.random.fold_in(stages.key, 11))
    state, _ = student.run(state, config.distill_steps)
    for t, dom in enumerate(data.tasks):
      m = stages.scores(student.task_params(state.params, t), *data.evals["test"][t])
      rows.append({"stage": "distillation", "method": config.method, "seed": config.seed,
                   "split": "test", "domain": dom, "student": name,
                   "accuracy": m["accuracy"], "f1": m["f1"]})
  return rows


def _initial_params(model, head, prompt, x, T, single, key):
  """The encoder (S) and shared prompt (PS) of one init; per-domain prompts (P, zeros) and
  heads (H, drawn) stacked [T, ...]; under single_task every domain's own shared prompt too,
  drawn as the multi-task one is."""
  base = model.init(key, x)
  d = base[PS].shape[-1]
  k_head, k_ps = jax.random.split(jax.random.fold_in(key, 1))
  params = {S: base[S], PS: base[PS],
            P: jnp.zeros((T,) + base[P].shape, base[P].dtype),
            H: jax.vmap(lambda k: head.init(k, jnp.zeros((2, d))))(jax.random.split(k_head, T))}
  if single:
    params[PS] = jax.vmap(lambda k: prompt.init(k)[0])(jax.random.split(k_ps, T))
  return params


def _scorer(predict, batch_size, ways):
  """scores(params, x, y): accuracy and macro-F1 of predict's argmax, in batches."""
  def scores(p, x, y):
    preds = []
    for i in range(0, len(y), batch_size):
      chunk = jax.tree.map(lambda a: jnp.asarray(a[i:i + batch_size]), x)
      preds.append(np.asarray(jnp.argmax(predict(p, chunk), -1)))
    cm = mj.mtl.confusion_matrix(jnp.asarray(np.concatenate(preds)), jnp.asarray(y), ways)
    return mj.mtl.classification_metrics(cm)
  return scores


def build(config, optimizer) -> _lib.Experiment:
  """Per-domain prompts and heads on the frozen encoder, trained by config.method; then the
  aggregation and distillation stages at evaluation (see the module docstring)."""
  enc = mj.pretrained.load(config.encoder or env.data_file("all-MiniLM-L6-v2"))
  depth, d = enc.config.num_hidden_layers, enc.config.hidden_size
  if not 0 < config.entry_layer < depth:
    raise ValueError(f"config.entry_layer must be in [1, {depth}) (the layers below are cached), "
                     f"got {config.entry_layer}")
  sets = load_sets(config)
  featurize = Featurizer(enc, config)
  data = load_domains(config, sets, featurize)
  T, ways, n_train = len(data.tasks), data.ways, data.train_y.shape[1]

  prompt = mj.prompts.composed(config.prompt_length, d, mode="add")
  head = mj.linear_head(ways)
  model = mj.compose(enc.net(entry_layer=config.entry_layer), head, prompt)
  key = jax.random.key(config.seed)
  single = config.method == "single_task"
  per_task = (H, P, PS) if single else (H, P)
  params = _initial_params(model, head, prompt, data.train_x["ids"][0, :2], T, single, key)

  def loss_fn(p, batch):
    x, y = batch
    return mj.cross_entropy(model.apply(p, x), y)

  def draw(key, tree):
    """config.batch_size distinct training utterances per domain from every [T, N, ...] leaf."""
    rows = jax.vmap(lambda k: jax.random.choice(k, n_train, (config.batch_size,), replace=False))(
        jax.random.split(key, T))                                       # [T, b]
    return jax.tree.map(lambda a: jax.vmap(lambda at, r: at[r])(a, rows), tree)

  balancer = mj.mtl.get("equal" if single else config.method,
                        **config_common.parse_hyperparameters(config.hyperparameters))
  mesh = env.mesh_from_env(T, "the number of training domains")
  trainer = mj.mtl.multitask_trainer(loss_fn, optimizer, balancer, num_tasks=T,
                                     per_task=per_task, frozen=(S,),
                                     sample=lambda k: draw(k, (data.train_x, data.train_y)),
                                     mesh=mesh)
  scores = _scorer(jax.jit(model.apply), config.eval_batch_size, ways)
  stages = _Stages(config, sets, featurize, data, model, loss_fn, trainer, draw, scores, single,
                   key)

  def evaluate(params):
    rows, val_acc = [], []
    for t, dom in enumerate(data.tasks):
      tp = trainer.task_params(params, t)
      for split in ("val", "test"):
        m = scores(tp, *data.evals[split][t])
        if split == "val":
          val_acc.append(m["accuracy"])
        rows.append({"stage": "multitask", "method": config.method, "seed": config.seed,
                     "split": split, "domain": dom, "accuracy": m["accuracy"], "f1": m["f1"]})
    if config.heldout_domains and config.transfer_steps:
      rows += aggregation_rows(stages, params, np.asarray(val_acc))
    if config.distill_steps:
      rows += distillation_rows(stages, params)
    return rows, None

  def plot(workdir, params, history, extras):
    del params, extras
    return _lib.plot_task_curves(workdir, history, loss_label="training cross-entropy",
                                 title=f"multitask_intents, {config.method}")

  count = lambda tree: int(sum(a.size for a in jax.tree.leaves(tree)))
  facts = {"domains": data.tasks, "heldout_domains": list(config.heldout_domains),
           "trained_parameters": count({r: v for r, v in params.items() if r != S}),
           "train_utterances_per_domain": int(n_train)}
  return _lib.Experiment("multitask_intents", trainer, params, evaluate, plot, facts=facts,
                         mesh=mesh)


def cli():
  """python -m experiments.multitask_intents --workdir DIR [--config.FIELD=VALUE ...]."""
  _lib.main(config_lib, build,
              algorithms=config_lib.METHODS, meta=False)


if __name__ == "__main__":
  cli()

"""Few-shot intent classification on a frozen pretrained encoder: one method per run.

  .venv/bin/python -m experiments.intents --workdir runs/intents/frozen_prototypes
  .venv/bin/python -m experiments.intents --workdir runs/intents/fomaml --config.method=fomaml
  .venv/bin/python -m experiments.intents --workdir runs/intents/fomaml --config.test_data=other.jsonl

See experiments/intents/config.py for the protocol, the methods and every field;
benchmarks/intents_table.sh runs them all and benchmarks/intents_table.py prints the table.
Re-running a finished workdir with another --config.test_data evaluates its trained model on
that file and adds its rows to results.json (no retraining).
"""

import os
import sys
import time
import warnings
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtpjax as mj
from experiments import _lib
from experiments.intents import config as config_lib
from mtpjax import prompts

from mtpjax.tasks import text as text_tasks
from experiments._lib import env

P, PS, H, S = mj.PROMPT, mj.PROMPT_SHARED, mj.HEAD, mj.SHARED
# The method records (experiments/intents/config.py) as the tables build reads.
METHODS = config_lib.METHODS
PROMPT_METHODS = tuple(m for m, r in METHODS.items() if r.prompt is not None)
ALGORITHMS = {m: r.algorithm for m, r in METHODS.items()}
FEATURES = {m: r.features for m, r in METHODS.items()}
STATIC_PROMPT_METHODS = tuple(m for m, r in METHODS.items() if r.task_independent_prompt)
VAL_SEED_OFFSET = 1
# A setting's episodes depend on the setting alone, never on which other settings a run lists,
# so every method is tested on the same episodes (paired differences). The table's five
# settings keep the keys they always had (their index here); any other setting gets its own.
TABLE_SETTINGS = ((5, 1), (5, 2), (5, 5), (5, 10), (15, 1))


def episode_key(eval_key, ways: int, shots: int, val: bool):
  """The key of the episodes of setting (ways, shots) on the validation or the test split."""
  if (ways, shots) in TABLE_SETTINGS:
    return jax.random.fold_in(eval_key, TABLE_SETTINGS.index((ways, shots))
                              + (VAL_SEED_OFFSET * 1000 if val else 0))
  base = jax.random.fold_in(eval_key, 10**6 + (VAL_SEED_OFFSET if val else 0))
  return jax.random.fold_in(base, 1000 * ways + shots)


class Split(NamedTuple):
  """One labelled set (a class split or an external file), tokenized."""

  name: str          # for messages and the "data" field of rows
  data: str          # the file's name
  kind: str          # "val", "test", "train"
  texts: text_tasks.TextSet
  ids: np.ndarray    # [n, max_len]


def check_domains(config, textset) -> dict:
  """The class split by domain: disjoint, known, fixed by the config."""
  splits = {"train": tuple(config.train_domains), "val": tuple(config.val_domains),
            "test": tuple(config.test_domains)}
  return text_tasks.split_by_group(textset, splits, what="config.<split>_domains")


def load_splits(config, enc) -> dict:
  path = config.data or env.data_file("clinc150.jsonl")
  config.data = path
  with warnings.catch_warnings():  # out-of-scope utterances are left out by design
    warnings.filterwarnings("ignore", message="load_jsonl: left out")
    textset = text_tasks.load_jsonl(path)
  name = os.path.basename(path)
  out = {}
  for kind, sub in check_domains(config, textset).items():
    out[kind] = Split(f"{name} {kind} domains", name, kind, sub, enc.tokenize(sub.texts, config.max_len)[0])
  if config.test_data:
    if not os.path.isfile(config.test_data):
      raise FileNotFoundError(f"config.test_data: no file at {config.test_data}")
    ext = text_tasks.load_jsonl(config.test_data)
    ext_name = os.path.basename(config.test_data)
    out["external"] = Split(ext_name, ext_name, "test", ext,
                            enc.tokenize(ext.texts, config.max_len)[0])
  return out


def usable_classes(split: Split, ways, shots, queries, setting) -> Optional[list]:
  """The classes with at least shots + queries examples (the others are skipped with a
  warning naming them), or None (with a warning) when fewer than `ways` remain."""
  need = shots + queries
  keep = text_tasks.classes_with_at_least(split.texts, need,
                                          what=f"{split.name}, {setting} (shots + queries = {need})")
  if len(keep) < ways:
    warnings.warn(f"{split.name}: {setting} skipped: it needs {ways} classes with at least "
                  f"{need} examples each, and {len(keep)} have them")
    return None
  return keep


def check_feasible(config, splits: dict, settings) -> None:
  """Errors before any work (features, compilation) for a setting a split cannot fill: the
  training episodes (when the method trains on episodes) and every test setting on the
  validation and test splits. An extra test file (config.test_data) only skips its
  infeasible settings, with a warning."""
  def classes_with(split, need):
    counts = np.bincount(split.texts.labels, minlength=len(split.texts.classes))
    return int(np.sum(counts >= need))

  wanted = [(splits["val"], w, s) for w, s in settings] + [
      (splits["test"], w, s) for w, s in settings]
  if config.num_steps > 0 and METHODS[config.method].training == "episodic":
    wanted.insert(0, (splits["train"], config.ways, config.shots))
  for split, ways, shots in wanted:
    need = shots + config.queries
    have = classes_with(split, need)
    if have < ways:
      field = ("config.ways / config.shots" if split.kind == "train"
               else "config.eval_settings")
      raise ValueError(f"{split.name}: {ways}-way {shots}-shot episodes need {ways} classes "
                       f"with at least shots + queries = {need} examples each, and {have} of "
                       f"its {len(split.texts.classes)} classes have them; lower {field} or "
                       f"config.queries")


def featurize(enc, kind: str, split: Split, entry_layer: int, shared=None) -> Optional[dict]:
  """The per-utterance arrays an episode gathers with the ids (see FEATURES)."""
  if kind == "ids" or (kind == "lower" and entry_layer == 0):
    return None
  loaded = enc if shared is None else enc._replace(params=shared)
  if kind == "embedding":
    return {"emb": mj.pretrained.encode(loaded, split.texts.texts, max_len=split.ids.shape[1],
                                          progress=False)}
  return {"lower": mj.pretrained.lower_states(loaded, split.ids, entry_layer, progress=False)}


def family(split: Split, feats, ways, shots, queries, setting, keep=None):
  """Episodes over the split's usable classes (`keep`, if already chosen), or None."""
  keep = usable_classes(split, ways, shots, queries, setting) if keep is None else keep
  if keep is None:
    return None
  index = {c: i for i, c in enumerate(split.texts.classes)}
  rows = np.flatnonzero(np.isin(split.texts.labels, [index[c] for c in keep]))
  relabel = {index[c]: i for i, c in enumerate(keep)}
  labels = np.array([relabel[int(y)] for y in split.texts.labels[rows]], np.int32)
  sub_feats = None if feats is None else {k: v[rows] for k, v in feats.items()}
  return text_tasks.episodes(split.ids[rows], labels, ways=ways, shots=shots, queries=queries,
                             class_names=keep, features=sub_feats, name=split.name)


def supervised_sampler(split: Split, feats, batch: int):
  """sample(key) -> Episode(b, b): `batch` random utterances with their class labels (the
  supervised rows train on every class of the split at once, with no inner loop)."""
  ids = jnp.asarray(split.ids)
  labels = jnp.asarray(split.texts.labels)
  feats = None if feats is None else {k: jnp.asarray(v) for k, v in feats.items()}
  n = ids.shape[0]
  if batch > n:
    raise ValueError(f"config.supervised_batch={batch} exceeds the {n} utterances of {split.name}")

  def sample(key):
    rows = jax.random.choice(key, n, (batch,), replace=False)
    x = ids[rows] if feats is None else {"ids": ids[rows], **{k: v[rows] for k, v in feats.items()}}
    b = mj.Batch(x, labels[rows])
    return mj.Episode(b, b)

  return sample


def cached_embeddings(width: int) -> mj.Net:
  """A backbone that returns the precomputed sentence embedding x["emb"] (frozen encoder)."""
  return mj.Net(lambda key, x: {}, lambda params, x, context=None: x["emb"], width)


def prompt_kind(config, enc) -> prompts.Prompt:
  d = enc.config.hidden_size
  depth = enc.config.num_hidden_layers - config.entry_layer if config.prompt == "prefix" else 0
  length = config.prompt_length
  if config.method == "prompt_pool":
    return prompts.ensembled(config.pool_size, length, d, instance=True, prefix_depth=depth)
  if config.method in ("generated", "generated_maml"):
    return prompts.generated(length, d, repr_dim=d, hidden=config.generator_hidden,
                             prefix_depth=depth, repr_offset=True)
  return prompts.static(length, d, prefix_depth=depth)


def vocab_prompt(enc, key, config) -> jax.Array:
  """prompt_init="vocab": random words, as the encoder sees them at the entry layer (word
  embeddings at layer 0; at layer k, their hidden states there, as the text "[CLS] w1 ..
  wP [SEP]" computes them)."""
  emb = mj.pretrained.token_embeddings(enc.params)
  if config.entry_layer == 0:
    return prompts.from_vocab(key, emb, config.prompt_length, skip_ids=1000)  # past [unused]
  words = jax.random.randint(key, (config.prompt_length,), 1000, emb.shape[0])
  cls, sep = enc.tokenizer.token_to_id("[CLS]"), enc.tokenizer.token_to_id("[SEP]")
  ids = np.concatenate([[cls], np.asarray(words), [sep]])[None].astype(np.int32)
  return jnp.asarray(mj.pretrained.lower_states(enc, ids, config.entry_layer)[0, 1:-1])


def count(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def check_method_fields(config):
  if config.prompt not in ("tokens", "prefix"):
    raise ValueError(f"config.prompt must be 'tokens' or 'prefix', got {config.prompt!r}")
  if config.prompt_init not in ("random", "vocab"):
    raise ValueError(f"config.prompt_init must be 'random' or 'vocab', got {config.prompt_init!r}")
  if config.prompt_init == "vocab" and (config.prompt == "prefix" or
                                        not METHODS[config.method].vocab_init):
    raise ValueError("config.prompt_init='vocab' initialises static prompt tokens "
                     "(config.prompt='tokens' with prompt_tuning, maml, fomaml, reptile or "
                     f"metasgd), not {config.prompt!r} with {config.method!r}")
  for name in ("ways", "shots", "queries", "prompt_length", "val_tasks", "pool_size",
               "generator_hidden", "supervised_steps", "supervised_batch",
               "eval_chunk_utterances"):
    if isinstance(config[name], bool) or not isinstance(config[name], int) or config[name] <= 0:
      raise ValueError(f"config.{name} must be a positive integer, got {config[name]!r}")
  if not config.scale > 0 or not config.logreg_c > 0:
    raise ValueError(f"config.scale and config.logreg_c must be > 0, got {config.scale}, "
                     f"{config.logreg_c}")
  if not METHODS[config.method].inner_loop and config.inner_steps:
    raise ValueError("config.method='generated' has no inner loop (inner_steps=0); "
                     "'generated_maml' refines the generated prompt")
  if config.num_steps and not METHODS[config.method].meta_trained:
    raise ValueError(f"config.num_steps must be 0 for method {config.method!r}: it has no "
                     f"meta-training loop" + (" (its prompts train per domain for "
                     "config.supervised_steps)" if config.method == "average" else ""))
  if config.method == "reptile" and config.inner_steps < 1:
    raise ValueError("reptile needs config.inner_steps >= 1")


class _Run:
  """One intents run's pieces, shared by its stages (model, training, evaluation): the
  encoder, the data splits, their per-utterance features (computed once, on first use) and
  the heads and learners of every way count. build() composes them."""

  def __init__(self, config, optimizer):
    self.config, self.optimizer, self.method = config, optimizer, config.method
    self.settings = _lib.parse_settings(config.eval_settings)
    self.enc = enc = mj.pretrained.load(config.encoder or env.data_file("all-MiniLM-L6-v2"))
    depth = enc.config.num_hidden_layers
    if isinstance(config.entry_layer, bool) or not 0 <= config.entry_layer < depth:
      raise ValueError(f"config.entry_layer must be in [0, {depth}) for this {depth}-layer "
                       f"encoder, got {config.entry_layer!r}")
    self.splits = load_splits(config, enc)
    check_feasible(config, self.splits, self.settings)
    self.kind, self.algo = FEATURES[self.method], ALGORITHMS[self.method]
    self.d = enc.config.hidden_size
    self.feats = {}
    self.net = enc.net(entry_layer=config.entry_layer)
    self.model = self._model()
    self.proto_cached = mj.compose(cached_embeddings(self.d))
    self.apply_jit = jax.jit(self.model.apply)

  def features(self, name, shared=None):
    if name not in self.feats or shared is not None:
      split = self.splits[name]
      print(f"computing {self.kind} features of {split.name} ({len(split.ids)} utterances)",
            file=sys.stderr)
      self.feats[name] = featurize(self.enc, self.kind, split, self.config.entry_layer, shared)
    return self.feats[name]

  # --- The model evaluated per episode, and its initial parameters ------------------------

  def _model(self):
    if self.kind == "embedding":
      return mj.compose(cached_embeddings(self.d), mj.linear_head(2)
                        if self.method == "frozen_logreg" else None)
    if self.kind == "ids":
      return mj.compose(self.enc.net())
    return mj.compose(self.net, None, prompt_kind(self.config, self.enc))

  def initial_params(self, key):
    config = self.config
    params = self.model.init(key, jnp.asarray(self.splits["train"].ids[:2]))
    if self.method == "frozen_logreg":  # a zero head per episode, sized by its ways
      params[H] = self.zero_head(config.ways)
    if self.method in PROMPT_METHODS and config.prompt_init == "vocab":
      params[P] = vocab_prompt(self.enc, jax.random.fold_in(key, 1), config)
    return params

  def zero_head(self, ways):
    return {"kernel": jnp.zeros((self.d, ways)), "bias": jnp.zeros((ways,))}

  def prompt_repr(self, p, support):
    if self.method not in ("generated", "generated_maml"):
      return None
    return prompts.support_summary(self.net.embed, p[S], support.x)

  def head_for(self, ways):
    """(loss, accuracy, task_repr) of a `ways`-way episode."""
    config = self.config
    if self.method == "frozen_logreg":
      logreg = mj.compose(cached_embeddings(self.d), mj.linear_head(ways))
      acc = mj.supervised(logreg.apply, mj.accuracy)

      def loss(p, batch):  # scikit-learn's objective, divided by n: C sum(CE) + ||W||^2 / 2
        ce = mj.cross_entropy(logreg.apply(p, batch.x), batch.y)
        return ce + jnp.sum(p[H]["kernel"] ** 2) / (2 * config.logreg_c * batch.y.shape[0])
      return loss, acc, None
    head = mj.prototype_classifier(self.model, ways, distance="cosine", scale=config.scale,
                                   prompt_repr=self.prompt_repr
                                   if self.method.startswith("generated") else None)
    return head.loss_fn, head.accuracy_fn, head.task_repr

  def learner_for(self, ways, sample=None, mesh=None):
    config = self.config
    loss, _, task_repr = self.head_for(ways)
    return mj.meta_learner(loss, self.optimizer, algorithm=self.algo,
                           inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                           meta_batch_size=config.meta_batch_size, sample=sample,
                           task_repr=task_repr, mesh=mesh)

  # --- Training --------------------------------------------------------------------------

  def trainer(self, params, key):
    """(learner, params, facts, mesh): what the loop trains for config.num_steps."""
    config, method, train = self.config, self.method, self.splits["train"]
    facts, mesh = {}, None
    if method in ("multitask", "finetune"):
      # Supervised over every meta-training intent: a linear head (dropped afterwards) and the
      # prompt (multitask) or the whole encoder (finetune), no inner loop.
      n_train = len(train.texts.classes)
      sup_model = (mj.compose(self.enc.net(entry_layer=config.entry_layer),
                              mj.linear_head(n_train), prompt_kind(config, self.enc))
                   if method == "multitask" else
                   mj.compose(self.enc.net(), mj.linear_head(n_train)))
      sup_params = sup_model.init(key, jnp.asarray(train.ids[:2]))
      if method == "multitask":
        sup_params[P] = params[P]
      params = sup_params
      trained = (P, H) if method == "multitask" else (S, H)
      sample = supervised_sampler(train, self.features("train") if method == "multitask"
                                  else None, config.supervised_batch)
      learner = mj.meta_learner(mj.supervised(sup_model.apply, mj.cross_entropy),
                                self.optimizer,
                                algorithm=mj.get_algorithm("maml", fast=(H,), outer=trained),
                                inner_steps=0, inner_lr=config.inner_lr, meta_batch_size=1,
                                sample=sample)
      facts["meta_trained_parameters"] = count({r: params[r] for r in trained})
    elif method == "average":
      params, seconds = average_prompt(config, self.enc, train, self.features("train"), params,
                                       key)
      facts["per_domain_training_seconds"] = seconds
      facts["meta_trained_parameters"] = count(params[P]) * len(config.train_domains)
      learner = self.learner_for(config.ways)
    else:
      sample = None
      if config.num_steps > 0:
        sample = family(train, self.features("train"), config.ways, config.shots,
                        config.queries, f"{config.ways}-way {config.shots}-shot").sample
        # The episodic meta-training splits its meta-batch over the devices (the supervised
        # rows above draw one batch a step: they run on one device).
        mesh = env.mesh_from_env(config.meta_batch_size, "config.meta_batch_size")
      learner = self.learner_for(config.ways, sample, mesh)
      if config.num_steps > 0:
        state = learner.init(params, key=key)
        facts["meta_trained_parameters"] = count(
            {r: state.params[r] for r in mj.meta.outer_roles(self.algo, state.params)})
    facts.setdefault("meta_trained_parameters", 0)
    return learner, params, facts, mesh

  def adapted_parameters(self, params):
    eval_steps = self.eval_steps()
    if max(eval_steps) == 0 or self.method == "frozen_prototypes":
      return 0
    if self.method == "frozen_logreg":
      return {f"{w}-way": (self.d + 1) * w for w, _ in self.settings}
    return count({r: params[r] for r in mj.meta.fast_roles(self.algo, params)})

  # --- Evaluation ------------------------------------------------------------------------

  def eval_steps(self):
    return tuple(sorted(set(int(s) for s in self.config.eval_inner_steps)))

  def eval_params(self, p):
    if self.method == "finetune":  # prototypes of the fine-tuned encoder's embeddings
      return {S: {}}
    return {r: v for r, v in p.items() if r != H or self.method not in ("multitask",)}

  def embed_split(self, p, name):
    """Every utterance of a split through the model at `p` (no adaptation), in batches."""
    f = self.features(name)
    ids = self.splits[name].ids
    out = []
    for b in range(0, len(ids), 256):
      x = jnp.asarray(ids[b:b + 256])
      if f is not None:
        x = {"ids": x, **{k: jnp.asarray(v[b:b + 256]) for k, v in f.items()}}
      out.append(np.asarray(self.apply_jit(p, x)))
    return {"emb": np.concatenate(out)}

  def run_split(self, p, name, shared, eval_key):
    """{setting: (EvalResult, the step count with the best mean)} on one split."""
    config, split = self.config, self.splits[name]
    f = self.features(name, shared)
    # With a prompt that does not depend on the task (static, averaged, a pool read by each
    # utterance), an episode's accuracy before adaptation is that of prototypes of the
    # utterances embedded once with the prompt: the same numbers as adapting 0 steps per
    # episode, without re-encoding each utterance in every episode it appears in.
    fast_zero = self.method in STATIC_PROMPT_METHODS and 0 in self.eval_steps()
    zero_feats = self.embed_split(p, name) if fast_zero else None
    results = {}
    for ways, shots in self.settings:
      setting = f"{ways}-way {shots}-shot"
      keep = usable_classes(split, ways, shots, config.queries, setting)  # warns once
      if keep is None:
        continue
      t = time.perf_counter()
      key = episode_key(eval_key, ways, shots, split.kind == "val")
      res = self.run_setting(p, split, f, zero_feats, ways, shots, keep, key)
      summary = res.summary()["accuracy"]
      best = max(summary, key=lambda s: (summary[s][0], -s))
      print(f"{split.name}: {setting}, {res.per_task['accuracy'].shape[0]} episodes, "
            f"{time.perf_counter() - t:.0f} s: "
            + ", ".join(f"{100 * m:.1f}% at {s} steps" for s, (m, _) in summary.items()),
            file=sys.stderr)
      results[setting] = (res, best)
    return results

  def eval_batch(self, ways, shots):
    """Episodes per vmapped chunk: config.eval_batch_size, else as many as hold
    config.eval_chunk_utterances. Memory grows with the utterances a chunk runs through the
    encoder: measured on maml's 15-way 1-shot episodes with 5 inner steps, 50 episodes (4,500
    utterances) a chunk peaked at 5.9 GB of resident memory, 10 (900) at 2.5 GB, at the same
    speed."""
    if self.config.eval_batch_size is not None:
      return self.config.eval_batch_size
    return max(1, self.config.eval_chunk_utterances // (ways * (shots + self.config.queries)))

  def run_setting(self, p, split, f, zero_feats, ways, shots, keep, key) -> mj.EvalResult:
    """One setting's episodes at every evaluated inner-step count."""
    config = self.config
    n_tasks = config.val_tasks if split.kind == "val" else config.eval_tasks
    batch = self.eval_batch(ways, shots)
    setting = f"{ways}-way {shots}-shot"
    eval_steps = steps = self.eval_steps()
    pieces = []
    if zero_feats is not None:
      head0 = mj.prototype_classifier(self.proto_cached, ways, distance="cosine",
                                      scale=config.scale)
      fam0 = family(split, zero_feats, ways, shots, config.queries, setting, keep)
      lrn0 = mj.meta_learner(head0.loss_fn, self.optimizer,
                             algorithm=ALGORITHMS["frozen_prototypes"], inner_steps=0,
                             task_repr=head0.task_repr)
      pieces.append(mj.evaluate(lrn0, {S: {}}, fam0.sample, key=key, num_tasks=n_tasks,
                                inner_steps=(0,), metrics={"accuracy": head0.accuracy_fn},
                                batch_size=batch, every_step=False))
      steps = tuple(s for s in eval_steps if s > 0)
    if steps:  # only now gather the split's features into an episode family
      pw = dict(p)
      if self.method == "frozen_logreg":
        pw[H] = self.zero_head(ways)
      _, acc, _ = self.head_for(ways)
      fam = family(split, f, ways, shots, config.queries, setting, keep)
      pieces.append(mj.evaluate(self.learner_for(ways), pw, fam.sample, key=key,
                                num_tasks=n_tasks, inner_steps=steps, metrics={"accuracy": acc},
                                batch_size=batch, every_step=False))
    return mj.EvalResult(
        {"accuracy": np.concatenate([r.per_task["accuracy"] for r in pieces], axis=1)},
        eval_steps, tuple(s for r in pieces for s in r.steps()))

  def evaluate(self, p):
    """(rows, extras): validation picks each setting's step count; every split's rows."""
    eval_key = jax.random.key(self.config.eval_seed)
    shared = p[S] if self.method == "finetune" else None
    p = self.eval_params(p)
    val = self.run_split(p, "val", shared, eval_key)
    selected = {s: best for s, (_, best) in val.items()}
    rows, extras = [], {}
    for name in ("val", "test", "external"):
      if name not in self.splits:
        continue
      split = self.splits[name]
      results = val if name == "val" else self.run_split(p, name, shared, eval_key)
      for setting, (res, _) in results.items():
        for row in _lib.eval_rows(res, metric_names={"accuracy": "accuracy"}, setting=setting):
          row.update(method=self.method, data=split.data, split=split.kind,
                     selected=row["inner_steps"] == selected.get(setting))
          if split.kind == "test":  # every method sees the same episodes: paired comparisons
            row["per_episode"] = [round(float(v), 4) for v in
                                  res.column("accuracy", row["inner_steps"])]
          rows.append(row)
      extras[name] = results
    return rows, extras


def build(config, optimizer) -> _lib.Experiment:
  """The experiment of config.method: its model and initial parameters, how it trains, and
  its evaluation on the validation and test splits (see the module docstring)."""
  t_build = time.perf_counter()
  check_method_fields(config)
  run = _Run(config, optimizer)
  key = jax.random.key(config.seed)
  learner, params, facts, mesh = run.trainer(run.initial_params(key), key)
  facts["adapted_parameters"] = run.adapted_parameters(params)
  facts["build_seconds"] = time.perf_counter() - t_build

  def plot(workdir, p, history, extras):
    return make_plots(workdir, config, history, extras)

  return _lib.Experiment(f"intents {config.method}", learner, params, run.evaluate, plot,
                         merge_by="data", facts=facts, mesh=mesh)


def average_prompt(config, enc, train: Split, train_feats, params, key):
  """SPoT-style: a prompt trained per meta-training domain (supervised over its intents with
  a linear head, from the same initialisation), and their mean."""
  t = time.perf_counter()
  trained = []
  for i, domain in enumerate(config.train_domains):
    classes = train.texts.classes_in([domain])
    sub = train.texts.subset(classes)
    index = {c: j for j, c in enumerate(train.texts.classes)}
    rows = np.flatnonzero(np.isin(train.texts.labels, [index[c] for c in classes]))
    split = Split(f"{train.data} {domain}", train.data, "train", sub, train.ids[rows])
    f = None if train_feats is None else {k: v[rows] for k, v in train_feats.items()}
    model = mj.compose(enc.net(entry_layer=config.entry_layer), mj.linear_head(len(classes)),
                       prompt_kind(config, enc))
    p = model.init(jax.random.fold_in(key, 100 + i), jnp.asarray(split.ids[:2]))
    p[P] = params[P]
    learner = mj.meta_learner(mj.supervised(model.apply, mj.cross_entropy),
                              optax.adam(config.outer_lr),
                              algorithm=mj.get_algorithm("maml", fast=(H,), outer=(P, H)),
                              inner_steps=0, meta_batch_size=1,
                              sample=supervised_sampler(split, f, config.supervised_batch))
    state = learner.init(p, key=jax.random.fold_in(key, 200 + i))
    state, metrics = learner.run(state, config.supervised_steps)
    loss = np.asarray(metrics["loss"])
    print(f"average: domain {domain}: {config.supervised_steps} supervised steps, loss "
          f"{loss[:5].mean():.3f} -> {loss[-5:].mean():.3f}", file=sys.stderr)
    trained.append(state.params[P])
  params = dict(params)
  params[P] = prompts.average(trained)
  return params, time.perf_counter() - t


def make_plots(workdir, config, history, extras):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  paths = _lib.plot_training_curve(workdir, history, metric="cross-entropy",
                                     title=f"intents, {config.method}")
  if "test" not in extras or all(len(res.steps()) < 2 for res, _ in extras["test"].values()):
    return paths  # one inner-step count (a frozen baseline): a plot of one point says nothing
  fig, ax = plt.subplots(figsize=(6, 4))
  for setting, (res, best) in extras["test"].items():
    mean, ci = res.curve("accuracy")
    xs = res.steps()
    ax.errorbar(xs, 100 * mean, yerr=100 * ci, marker="o", capsize=3,
                label=f"{setting} (validation picks {best})")
  ax.set(xlabel="inner steps per episode", ylabel="test accuracy (%)",
         title=f"{config.method}: {config.eval_tasks} test episodes per setting, 95% CI")
  ax.legend(fontsize=7)
  paths.append(_lib.save_figure(fig, workdir, "accuracy_vs_inner_steps.png"))
  return paths


def cli():
  """python -m experiments.intents --workdir DIR [--config.FIELD=VALUE ...]."""
  _lib.main(config_lib, build, config_lib.METHODS)


if __name__ == "__main__":
  cli()

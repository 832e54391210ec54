"""Few-shot text classification episodes drawn on the device from tokenized rows.

A labelled text set is tokenized once on the host into fixed-length ids [n, max_len] (see
mtpjax.pretrained.Pretrained.tokenize); classes may have different numbers of examples. The
rows live on the device with a padded index [classes, max_count] of each class's rows, and an
episode is a gather inside the jitted step, as for Omniglot.

With a frozen encoder, what does not change can be computed once for the whole set and
gathered with the ids: `features` (e.g. the hidden states below a late prompt, Net.prepare's
{"lower": ...}, or the final sentence embeddings) makes each episode's x the dict
{"ids": ..., **features}.
"""

import json
import os
import warnings
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtpjax._src import types


class TextEpisodes(NamedTuple):
  """A text task family on the device (made by episodes()): sample(key) -> Episode."""

  ids: types.Array      # [n, T] int32 token ids of every example (padding id 0)
  index: types.Array    # [classes, max_count] int32 rows of each class (padded with 0)
  counts: types.Array   # [classes] int32 examples per class
  ways: int
  shots: int
  queries: int
  features: Optional[dict] = None  # name -> [n, ...] arrays gathered with the ids

  def sample(self, key: types.PRNGKey) -> types.Episode:
    """One episode: x [ways * shots, T] / [ways * queries, T], labels in [0, ways).

    Classes are drawn without replacement and labelled 0..ways-1 in the drawn (random)
    order; each class's support and query rows are distinct examples of that class.
    """
    k_cls, k_ex = jax.random.split(key)
    classes = jax.random.choice(k_cls, self.index.shape[0], (self.ways,), replace=False)
    n = self.shots + self.queries
    max_count = self.index.shape[1]
    # A uniformly random order of each class's own rows: random keys, padding slots last.
    u = jax.random.uniform(k_ex, (self.ways, max_count))
    u = jnp.where(jnp.arange(max_count)[None, :] < self.counts[classes][:, None], u, 2.0)
    order = jnp.argsort(u, axis=1)[:, :n]                                    # [ways, n]
    rows = jnp.take_along_axis(self.index[classes], order, axis=1)          # [ways, n]
    y = jnp.broadcast_to(jnp.arange(self.ways)[:, None], (self.ways, n))
    x = {"ids": self.ids, **(self.features or {})}

    def take(part):  # part: a slice of each class's n drawn rows
      flat = rows[:, part].reshape(-1)
      xs = {k: v[flat] for k, v in x.items()}
      return types.Batch(xs if self.features else xs["ids"], y[:, part].reshape(-1))

    return types.Episode(take(slice(0, self.shots)), take(slice(self.shots, n)))


def episodes(ids, labels, *, ways: int, shots: int, queries: int,
             class_names: Optional[Sequence[str]] = None, vocab_size: Optional[int] = None,
             features: Optional[dict] = None, name: str = "data") -> TextEpisodes:
  """Validated constructor over tokenized rows and integer labels.

  Args:
    ids: [n, T] integer token ids (padding 0).
    labels: [n] integers in [0, classes); every class in that range must have at least
      shots + queries examples.
    ways: classes per episode.
    shots: support examples per class.
    queries: query examples per class.
    class_names: names for error messages (class c is class_names[c]).
    vocab_size: if given, ids must lie in [0, vocab_size) (checked once here, not per episode).
    features: optional {name: [n, ...]} arrays computed once per example (e.g. a frozen
      encoder's lower layers); episodes then carry x = {"ids": ids, **features}.

  >>> fam = episodes(np.ones((12, 4), np.int32), np.repeat(np.arange(3), 4), ways=2, shots=1,
  ...                queries=2)
  >>> fam.sample(jax.random.key(0)).query.x.shape
  (4, 4)
  """
  ids = np.asarray(ids)
  labels = np.asarray(labels)
  for field, value in (("ways", ways), ("shots", shots), ("queries", queries)):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"{field} must be a positive integer, got {value!r}")
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"{name}: ids must be an integer array [examples, tokens], got {ids.shape} "
                     f"{ids.dtype}")
  if labels.shape != ids.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name}: labels must be integers shaped [{ids.shape[0]}], got "
                     f"{labels.shape} {labels.dtype}")
  if ids.shape[0] == 0:
    raise ValueError(f"{name}: no examples")
  if labels.min() < 0:
    raise ValueError(f"{name}: labels must be >= 0, found {labels.min()}")
  if vocab_size is not None and (ids.min() < 0 or ids.max() >= vocab_size):
    raise ValueError(f"{name}: token ids must lie in [0, {vocab_size}), found "
                     f"[{ids.min()}, {ids.max()}]")
  num_classes = int(labels.max()) + 1
  counts = np.bincount(labels, minlength=num_classes)
  names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
  if len(names) < num_classes:
    raise ValueError(f"{name}: {len(names)} class names for {num_classes} classes")
  if ways > num_classes:
    raise ValueError(f"ways={ways} exceeds the {num_classes} classes in {name}")
  need = shots + queries
  short = [(names[c], int(counts[c])) for c in range(num_classes) if counts[c] < need]
  if short:
    listed = ", ".join(f"{n!r} has {k}" for n, k in short[:10])
    raise ValueError(f"{name}: shots + queries = {shots} + {queries} = {need} examples per class "
                     f"are needed, but {len(short)} classes have fewer: {listed}"
                     f"{' ...' if len(short) > 10 else ''}")
  if features is not None:
    if not isinstance(features, dict) or "ids" in features or not features:
      raise ValueError(f"{name}: features must be a non-empty dict of arrays (not named "
                       f"'ids'), got {type(features).__name__}")
    bad = {k: np.shape(v) for k, v in features.items() if np.shape(v)[:1] != ids.shape[:1]}
    if bad:
      raise ValueError(f"{name}: every feature needs one row per example ({ids.shape[0]}), "
                       f"got shapes {bad}")
    features = {k: jnp.asarray(v) for k, v in features.items()}
  max_count = int(counts.max())
  index = np.zeros((num_classes, max_count), np.int32)
  for c in range(num_classes):
    rows = np.flatnonzero(labels == c)
    index[c, :rows.size] = rows
  return TextEpisodes(jnp.asarray(ids, jnp.int32), jnp.asarray(index),
                      jnp.asarray(counts, jnp.int32), ways, shots, queries, features)


class TextSet(NamedTuple):
  """A labelled text set on the host: texts [n], labels [n] in [0, len(classes)), the class
  names, and each class's group (its "domain" field, or None when the file has none)."""

  texts: list
  labels: np.ndarray
  classes: list
  groups: Optional[list]

  def subset(self, classes: Sequence[str]) -> "TextSet":
    """The examples of the named classes, relabelled 0..len(classes)-1 in the given order."""
    unknown = [c for c in classes if c not in self.classes]
    if unknown:
      raise ValueError(f"subset: unknown classes {unknown[:5]}; the set has {len(self.classes)} "
                       f"classes, e.g. {self.classes[:5]}")
    new = {self.classes.index(c): i for i, c in enumerate(classes)}
    keep = [i for i, y in enumerate(self.labels) if int(y) in new]
    groups = None if self.groups is None else [self.groups[self.classes.index(c)] for c in classes]
    return TextSet([self.texts[i] for i in keep],
                   np.array([new[int(self.labels[i])] for i in keep], np.int32), list(classes),
                   groups)

  def classes_in(self, groups: Sequence[str]) -> list:
    """The classes whose group is one of `groups`, in the set's order."""
    if self.groups is None:
      raise ValueError("classes_in: the set has no groups (its lines have no 'domain' field)")
    unknown = sorted(set(groups) - set(self.groups))
    if unknown:
      raise ValueError(f"classes_in: unknown groups {unknown}; the set has "
                       f"{sorted(set(self.groups))}")
    return [c for c, g in zip(self.classes, self.groups) if g in groups]


def load_jsonl(path: str, *, exclude: Sequence[str] = ("oos",),
               splits: Optional[Sequence[str]] = None) -> TextSet:
  """Reads a JSONL file of labelled texts: one object per line with "text" and "intent" (a
  class name) or an integer "label"; "domain" (the class's group) and "split" are optional,
  other fields are ignored.

  Args:
    path: the file.
    exclude: class names left out (CLINC150's out-of-scope "oos"); integer labels below 0 are
      always left out. How many were left out is warned about.
    splits: keep only lines whose "split" is one of these (e.g. ("train",)); None keeps all.

  Classes are sorted by name (integer labels by value), so the same file always gives the same
  class indices. A file labels its classes one way: "intent" on every line or "label" on
  every line (1 and "1" would otherwise be two classes both named '1'), and gives "domain"
  on every line or on none. A UTF-8 byte-order mark (spreadsheet exports) is skipped.
  Errors name the file, the line and what is wrong.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"load_jsonl: no file at {path}")
  texts, names, domains = [], [], {}
  dropped = 0
  first_kind = None       # (field, line) of the first labelled line: "intent" or "label"
  with_domain, without_domain = [], []  # line numbers, for a mixed presence of "domain"
  for number, where, row in _jsonl_rows(path):
    kind = "intent" if "intent" in row else "label"
    if first_kind is None:
      first_kind = (kind, number)
    elif kind != first_kind[0]:
      raise ValueError(f"load_jsonl: {where} labels its class with {kind!r}, but line "
                       f"{first_kind[1]} with {first_kind[0]!r}; use one field in a file "
                       f"(1 and \"1\" would become two classes both named '1')")
    (with_domain if "domain" in row else without_domain).append(number)
    name = _class_name(row, where)
    if name is None:  # a negative integer label
      dropped += 1
      continue
    if splits is not None and row.get("split") not in splits:
      continue
    if name in exclude:
      dropped += 1
      continue
    texts.append(row["text"])
    names.append(name)
    if "domain" in row:
      if domains.setdefault(name, row["domain"]) != row["domain"]:
        raise ValueError(f"load_jsonl: {where}: class {name!r} is in domain "
                         f"{row['domain']!r} here and {domains[name]!r} before")
  if with_domain and without_domain:
    few, many = sorted((with_domain, without_domain), key=len)
    field = "has" if few is with_domain else "lacks"
    raise ValueError(f"load_jsonl: {path}: line(s) {', '.join(map(str, few[:5]))}"
                     f"{' ...' if len(few) > 5 else ''} {field} a 'domain' field, unlike the "
                     f"other {len(many)} line(s); give every line a domain or none")
  if not texts:
    raise ValueError(f"load_jsonl: {path} has no examples (after splits={splits}, "
                     f"exclude={list(exclude)})")
  if dropped:
    warnings.warn(f"load_jsonl: left out {dropped} examples of excluded classes "
                  f"{list(exclude)} or negative labels in {path}")
  classes = sorted(set(names), key=lambda c: (isinstance(c, str), c))
  index = {c: i for i, c in enumerate(classes)}
  labels = np.array([index[n] for n in names], np.int32)
  groups = [domains.get(c) for c in classes] if len(domains) == len(classes) else None
  return TextSet(texts, labels, [str(c) for c in classes], groups)


def _jsonl_rows(path: str):
  """(line number, "PATH, line N", object) for each non-empty line: UTF-8 (a byte-order mark
  on line 1 skipped), JSON, an object with a string "text"; else a ValueError naming the
  line."""
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      where = f"{path}, line {number}"
      try:
        line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
      except UnicodeDecodeError:
        raise ValueError(f"load_jsonl: {where} is not UTF-8") from None
      if not line:
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"load_jsonl: {where} is not JSON: {e}") from None
      if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise ValueError(f"load_jsonl: {where} needs a string field 'text'")
      yield number, where, row


def _class_name(row: dict, where: str):
  """The class of a line: its "intent" string or its integer "label" (None when negative)."""
  if "intent" in row:
    if not isinstance(row["intent"], str):
      raise ValueError(f"load_jsonl: {where}: 'intent' must be a string, got {row['intent']!r}")
    return row["intent"]
  label = row.get("label")
  if isinstance(label, int) and not isinstance(label, bool):
    return None if label < 0 else label
  raise ValueError(f"load_jsonl: {where} needs 'intent' (a class name) or an integer 'label'")


def split_by_group(textset: TextSet, splits: dict, *, what: str = "split") -> dict:
  """Class splits by group (CLINC150's domains): {name: [groups]} -> {name: TextSet}.

  The groups must exist and the splits must be disjoint (errors name the group and both
  splits); each split holds every example of its groups' classes, relabelled from 0.
  """
  if textset.groups is None:
    raise ValueError(f"{what}: the data has no 'domain' field, which a split by group needs")
  known = sorted(set(textset.groups))
  seen = {}
  for name, groups in splits.items():
    if not groups:
      raise ValueError(f"{what}: the {name!r} split has no groups")
    for g in groups:
      if g not in known:
        raise ValueError(f"{what} {name!r}: unknown group {g!r}; the data has {known}")
      if g in seen:
        raise ValueError(f"{what}: group {g!r} is in both the {seen[g]!r} and the {name!r} "
                         f"splits; they must be disjoint")
      seen[g] = name
  return {name: textset.subset(textset.classes_in(groups)) for name, groups in splits.items()}


def classes_with_at_least(textset: TextSet, count: int, *, what: str = "data") -> list:
  """The classes with at least `count` examples; the others are left out with a warning that
  names them and their counts."""
  counts = np.bincount(textset.labels, minlength=len(textset.classes))
  short = [(c, int(k)) for c, k in zip(textset.classes, counts) if k < count]
  if short:
    listed = ", ".join(f"{c!r} ({k})" for c, k in short[:10]) + (" ..." if len(short) > 10 else "")
    warnings.warn(f"{what}: skipping {len(short)} classes with fewer than {count} examples: "
                  f"{listed}")
  return [c for c, k in zip(textset.classes, counts) if k >= count]

"""The intent benchmark (experiments/intents/main.py) on a tiny random BERT and generated JSONL data:
every method end to end, the class split, test_data on resume, the 0-step shortcut, errors."""

import os
import warnings

import numpy as np
import pytest

from experiments import _lib
from experiments.intents import main as intents
from experiments.intents import config as config_lib
from tests.test_pretrained import WORDS, write_checkpoint, write_jsonl

DOMAINS = ("d0", "d1", "d2")


def utterances(rng, n):
  return [" ".join(rng.choice(WORDS, size=rng.integers(1, 5))) for _ in range(n)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("intents")
  enc = write_checkpoint(str(root / "enc"))
  rng = np.random.default_rng(0)
  rows = [{"text": t, "intent": f"{d}_i{k}", "domain": d, "split": "train"}
          for d in DOMAINS for k in range(4) for t in utterances(rng, 6)]
  rows += [{"text": "hi", "intent": "oos", "domain": "oos", "split": "oos_train"}]
  data = write_jsonl(root / "data.jsonl", rows)
  # Another data set: integer labels, Unicode, an empty utterance, an unknown field.
  ext = [{"text": t, "label": k, "source": "x"} for k in range(3) for t in utterances(rng, 5)]
  ext += [{"text": "", "label": 0}, {"text": "Café 😀 money", "label": 1}]
  return {"encoder": enc, "data": data, "ext": write_jsonl(root / "ext.jsonl", ext),
          "root": root}


def tiny_config(files, method, **overrides):
  c = config_lib.get_config(method)
  c.update(dict(encoder=files["encoder"], data=files["data"], train_domains=("d0",),
                val_domains=("d1",), test_domains=("d2",), ways=3, shots=1, queries=2,
                eval_settings=("3x1",), eval_tasks=4, val_tasks=3, num_steps=2, log_every=1,
                checkpoint_every=2, max_len=8, prompt_length=2, entry_layer=1, pool_size=2,
                generator_hidden=8, supervised_steps=2, supervised_batch=8, meta_batch_size=2,
                eval_batch_size=4, progress=False))
  c.update(overrides)
  config = c
  config_lib.check(config)
  if config.num_steps and method in config_lib.NO_META_TRAINING + ("average",):
    config.num_steps = 0
  if config.method in ("multitask", "finetune"):
    config.num_steps = 2
  config.eval_inner_steps = tuple(min(s, 2) for s in config.eval_inner_steps)
  method_ = config_lib.METHODS[method]
  if ("eval_inner_steps" not in overrides and config.eval_inner_steps == (0,)
      and method_.inner_loop and method_.prompt is not None):
    config.eval_inner_steps = (0, 2)  # test-time steps run too, though not a default here
  _lib.check_config(config, config_lib.METHODS)
  return config


def run(files, workdir, method, **overrides):
  config = tiny_config(files, method, **overrides)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    exp = intents.build(config, _lib.make_optimizer(config))._replace(plot=None)
    return _lib.train_and_evaluate(config, str(workdir), exp)


# Four methods share their twin's code path and are left out to keep the suite short: fomaml,
# metasgd and reptile are maml's path with another meta-gradient rule or a learned inner
# rate (tests/test_meta.py checks those rules; fomaml also builds and evaluates in the
# zero-step and resume tests below), and generated is generated_maml's path with no inner
# steps at evaluation.
END_TO_END = tuple(m for m in config_lib.METHODS
                   if m not in ("fomaml", "metasgd", "reptile", "generated"))


@pytest.mark.parametrize("method", END_TO_END)
def test_every_method_runs_end_to_end_on_a_tiny_bert(files, tmp_path, method):
  res = run(files, tmp_path, method)
  rows = res["rows"]
  assert {(r["split"], r["setting"]) for r in rows} == {("val", "3-way 1-shot"),
                                                       ("test", "3-way 1-shot")}
  for r in rows:
    assert r["method"] == method and r["data"] == "data.jsonl" and 0 <= r["mean"] <= 1
    assert r["episodes"] == (3 if r["split"] == "val" else 4) and r["nonfinite"] == 0
  for split in ("val", "test"):  # validation picks exactly one inner-step count per setting
    assert sum(r["selected"] for r in rows if r["split"] == split) == 1
  assert res["num_steps"] == (0 if method in config_lib.NO_META_TRAINING + ("average",) else 2)
  assert res["meta_trained_parameters"] >= 0 and "adapted_parameters" in res


def test_the_default_class_split_is_disjoint_fixed_and_covers_clinc150():
  c = config_lib.get_config()
  split = [c.train_domains, c.val_domains, c.test_domains]
  assert tuple(c.test_domains) == ("banking", "credit_cards")
  assert len(c.train_domains) == 6 and len(c.val_domains) == 2
  flat = [d for s in split for d in s]
  assert len(set(flat)) == len(flat) and sorted(flat) == sorted(config_lib.CLINC_DOMAINS)


@pytest.mark.parametrize("overrides,match", [
    (dict(ways=200), r"train domains: 200-way 1-shot episodes need 200 classes.*lower "
                     r"config.ways / config.shots"),
    (dict(eval_settings=("200x1",)), r"val domains: 200-way 1-shot episodes need 200 classes"
                                     r".*lower config.eval_settings"),
])
def test_infeasible_settings_are_errors_before_any_work(files, tmp_path, overrides, match):
  # They warned, then crashed in training ('NoneType' has no attribute 'sample') or exited 0
  # with no rows and an empty plot.
  with pytest.raises(ValueError, match=match):
    run(files, tmp_path, "fomaml", **overrides)
  assert not os.path.exists(tmp_path / "checkpoints")


def test_overlapping_or_unknown_domains_are_clear_errors(files, tmp_path):
  with pytest.raises(ValueError, match="group 'd0' is in both the 'train' and the 'val' splits"):
    run(files, tmp_path / "a", "frozen_prototypes", val_domains=("d0",))
  with pytest.raises(ValueError, match="unknown group 'banking'"):
    run(files, tmp_path / "b", "frozen_prototypes", test_domains=("banking",))


def test_test_data_on_resume_adds_rows_without_retraining(files, tmp_path):
  first = run(files, tmp_path, "fomaml")
  assert {r["data"] for r in first["rows"]} == {"data.jsonl"}
  ckpt = sorted(os.listdir(tmp_path / "checkpoints"))
  # Chunks sized by utterances (9 = one 3-way 1-shot episode with its 6 queries) instead of 4
  # episodes: only memory changes, so the resumed run evaluates the same episodes.
  again = run(files, tmp_path, "fomaml", test_data=files["ext"], eval_batch_size=None,
              eval_chunk_utterances=9)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ckpt  # resumed, not retrained
  ext_rows = [r for r in again["rows"] if r["data"] == "ext.jsonl"]
  assert ext_rows and all(r["split"] == "test" and r["episodes"] == 4 for r in ext_rows)
  # The earlier rows stay (re-evaluated on the same episodes: the same numbers).
  old = {(r["split"], r["inner_steps"]): r["mean"] for r in first["rows"]}
  new = {(r["split"], r["inner_steps"]): r["mean"] for r in again["rows"]
         if r["data"] == "data.jsonl"}
  assert new == pytest.approx(old)
  assert len(again["rows"]) == len(first["rows"]) + len(ext_rows)
  # Another method on this workdir is refused, allowed or not, and leaves the run resumable.
  with pytest.raises(_lib.ConfigMismatch, match="method: checkpoint 'fomaml' vs now 'prompt_pool'"):
    run(files, tmp_path, "prompt_pool", test_data=files["ext"])
  with pytest.raises(_lib.ConfigMismatch, match="another structure"):
    config = tiny_config(files, "prompt_pool", test_data=files["ext"])
    exp = intents.build(config, _lib.make_optimizer(config))._replace(plot=None)
    _lib.train_and_evaluate(config, str(tmp_path), exp, allow_config_change=True)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ckpt
  assert not os.path.exists(str(tmp_path / "checkpoints") + ".unreadable")


def test_test_data_errors_name_the_classes_and_counts(files, tmp_path):
  rows = [{"text": w, "intent": "big"} for w in WORDS[:6]] + [
      {"text": w, "intent": "small"} for w in WORDS[:2]] + [
      {"text": w, "intent": "other"} for w in WORDS[:6]]
  path = write_jsonl(files["root"] / "short.jsonl", rows)
  config = tiny_config(files, "frozen_prototypes", test_data=path)
  exp = intents.build(config, _lib.make_optimizer(config))._replace(plot=None)
  with pytest.warns(UserWarning) as caught:
    res = _lib.train_and_evaluate(config, str(tmp_path), exp)
  messages = " ".join(str(w.message) for w in caught)
  assert "'small' (2)" in messages and "shots + queries = 3" in messages
  assert "3-way 1-shot skipped: it needs 3 classes" in messages
  assert not [r for r in res["rows"] if r["data"] == "short.jsonl"]
  with pytest.raises(FileNotFoundError, match="config.test_data"):
    run(files, tmp_path / "x", "frozen_prototypes", test_data=str(files["root"] / "none.jsonl"))


def test_unknown_method_and_misused_fields_are_clear_errors(files):
  with pytest.raises(ValueError, match="config.method must be one of"):
    tiny_config(files, "nope")
  config = tiny_config(files, "prompt_pool", prompt_init="vocab")
  with pytest.raises(ValueError, match="prompt_init='vocab'"):
    intents.build(config, _lib.make_optimizer(config))
  config = tiny_config(files, "fomaml", entry_layer=3)
  with pytest.raises(ValueError, match=r"entry_layer must be in \[0, 3\)"):
    intents.build(config, _lib.make_optimizer(config))


@pytest.mark.parametrize("method", ["fomaml", "prompt_pool"])
def test_zero_step_shortcut_equals_adapting_zero_steps_per_episode(files, tmp_path, method,
                                                                    monkeypatch):
  """Prototypes of utterances embedded once with the prompt == the per-episode computation."""
  fast = run(files, tmp_path / "fast", method, eval_inner_steps=(0,), num_steps=0)
  monkeypatch.setattr(intents, "STATIC_PROMPT_METHODS", ())
  slow = run(files, tmp_path / "slow", method, eval_inner_steps=(0,), num_steps=0)
  a = [(r["split"], r["mean"]) for r in fast["rows"]]
  b = [(r["split"], r["mean"]) for r in slow["rows"]]
  assert [s for s, _ in a] == [s for s, _ in b]
  np.testing.assert_allclose([m for _, m in a], [m for _, m in b], atol=1e-6)


def test_results_of_other_data_files_are_kept_on_re_evaluation(tmp_path):
  path = tmp_path / "results.json"
  old = [{"data": "a.jsonl", "mean": 0.1}, {"data": "b.jsonl", "mean": 0.2}]
  path.write_text(__import__("json").dumps({"rows": old}))
  new = [{"data": "a.jsonl", "mean": 0.3}, {"data": "c.jsonl", "mean": 0.4}]
  merged = _lib.workdir.merged_rows(str(path), new, "data")
  assert merged == [{"data": "b.jsonl", "mean": 0.2}] + new  # b kept, a replaced, c added
  assert _lib.workdir.merged_rows(str(tmp_path / "none.json"), new, "data") == new


def test_a_settings_episodes_do_not_depend_on_the_other_settings_a_run_lists():
  """The episode key is a function of (ways, shots, split) alone, so a run listing fewer
  settings tests a setting on the same episodes as the full table (paired differences);
  the table's five settings keep the keys of their index in it."""
  import jax
  key = jax.random.key(2021)
  data = lambda k: tuple(np.asarray(jax.random.key_data(k)).ravel())
  for i, (ways, shots) in enumerate(intents.TABLE_SETTINGS):
    assert data(intents.episode_key(key, ways, shots, False)) == data(jax.random.fold_in(key, i))
    assert data(intents.episode_key(key, ways, shots, True)) == data(
        jax.random.fold_in(key, i + 1000))
  every = {data(intents.episode_key(key, w, s, v)) for w in (2, 3, 5, 15, 20)
           for s in (1, 2, 5, 10) for v in (False, True)}
  assert len(every) == 5 * 4 * 2  # no two settings or splits share episodes


def test_a_run_with_fewer_settings_draws_the_same_episodes(files, tmp_path):
  def episodes(name, settings):
    res = run(files, tmp_path / name, "frozen_prototypes", eval_settings=settings)
    return [r["per_episode"] for r in res["rows"]
            if r["split"] == "test" and r["setting"] == "3-way 1-shot"]
  assert episodes("one", ("3x1",)) == episodes("two", ("2x1", "3x1"))

"""experiments/multitask/main.py end to end on a tiny problem, and the Δm table built from its runs."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import mtpjax as mj

from benchmarks import multitask_table
from experiments import _lib
from experiments.multitask import main as multitask
from experiments.multitask import config as config_lib


def tiny(method, **overrides):
  c = config_lib.get_config(method)
  c.update(dict(dim=6, train_examples=256, val_examples=64, test_examples=64, batch_size=16,
                bottom=(8,), experts=2, expert=(4,), tower=(4,), num_steps=20, log_every=10,
                checkpoint_every=20, steps_per_call=10, progress=False))
  c.update(overrides)
  config = c
  config_lib.check(config)
  _lib.check_config(config, config_lib.METHODS, meta=False)
  return config


def run(workdir, method, **overrides):
  config = tiny(method, **overrides)
  exp = multitask.build(config, _lib.make_optimizer(config))
  return _lib.train_and_evaluate(config, str(workdir), exp)


@pytest.mark.parametrize("method,arch,prompt_dim", [("famo", "mmoe", 3),
                                                    ("pcgrad", "shared_bottom", 2)])
def test_multitask_experiment_runs_and_reports_per_task_mse(tmp_path, method, arch, prompt_dim):
  res = run(tmp_path, method, arch=arch, prompt_dim=prompt_dim)
  rows = res["rows"]
  assert {(r["split"], r["task"]) for r in rows} == {(s, t) for s in ("val", "test")
                                                    for t in (0, 1)}
  assert all(r["method"] == method and r["arch"] == arch and r["mse"] > 0 for r in rows)
  assert res["num_steps"] == 20 and res["algorithm"] == method
  logs = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert [len(r["weights"]) for r in logs] == [2, 2]  # per-task vectors, not their mean
  assert os.path.exists(os.path.join(tmp_path, "weights.png"))
  first = logs[0]["task_losses"]
  assert np.isfinite(first).all()


def test_the_table_computes_delta_m_against_the_same_seeds_single_task_runs(tmp_path):
  for m in ("equal", "single_task"):
    run(tmp_path / m, m, num_steps=10, log_every=10, checkpoint_every=10)
  table = multitask_table.load(str(tmp_path), "test")
  summary = multitask_table.summarise(table)
  eq = summary[("mmoe", 0.5, "equal")]
  base = table[("mmoe", 0.5, "single_task", 0)]
  mine = table[("mmoe", 0.5, "equal", 0)]
  expect = 100 * np.mean([(base[t]["mse"] - mine[t]["mse"]) / base[t]["mse"] for t in "01"])
  assert eq["libmtl"][0] == pytest.approx(expect)
  assert eq["mean"][0] == pytest.approx(-expect)
  assert summary[("mmoe", 0.5, "single_task")]["libmtl"] is None
  assert "| equal |" in multitask_table.markdown(summary)


def test_multitask_config_errors_are_clear():
  with pytest.raises(ValueError, match="config.method"):
    tiny("adam")
  with pytest.raises(ValueError, match="config.arch"):
    tiny("equal", arch="transformer")
  with pytest.raises(ValueError, match="name=value"):
    tiny("cagrad", hyperparameters="c0.4")
  assert config_lib.parse_hyperparameters("c=0.4, normalization=l2") == {
      "c": 0.4, "normalization": "l2"}


def test_omniglot_alphabets_of_different_sizes_as_tasks_run_end_to_end(tmp_path):
  from benchmarks import multitask_intents_table
  from experiments.multitask_omniglot import main as multitask_omniglot
  from experiments.multitask_omniglot import config as omni_config
  from tests.test_omniglot import tiny_npz
  # Two background alphabets of 3 and 2 characters: the second's head has a masked output.
  tiny_npz(tmp_path / "o.npz", n_bg=5, background_alphabet=np.array(["A"] * 3 + ["B"] * 2))
  results = {}
  for m in ("mgda", "single_task"):
    c = omni_config.get_config(m)
    c.update(dict(data=str(tmp_path / "o.npz"), num_alphabets=2, filters=32, prompt_dim=2,
                  batch_size=4, num_steps=4, log_every=2, checkpoint_every=4, steps_per_call=2,
                  progress=False))
    config = c
    omni_config.check(config)
    _lib.check_config(config, omni_config.METHODS, meta=False)
    exp = multitask_omniglot.build(config, _lib.make_optimizer(config))
    results[m] = _lib.train_and_evaluate(config, str(tmp_path / f"{m}_s0"), exp)
  rows = results["mgda"]["rows"]
  assert {(r["split"], r["domain"]) for r in rows} == {(s, a) for s in ("val", "test")
                                                      for a in ("A", "B")}
  assert results["mgda"]["characters"] == [3, 2]
  assert all(0 <= r["accuracy"] <= 1 for r in rows)
  table = multitask_intents_table.markdown(
      multitask_intents_table.load(str(tmp_path), "multitask_omniglot"))
  assert "| mgda |" in table


def _final_state(workdir, config):
  exp = multitask.build(config, _lib.make_optimizer(config))
  like = exp.learner.init(exp.params, key=jax.random.key(config.seed))
  return mj.Checkpointer(str(workdir / "checkpoints")).restore(like)[0]


def _assert_same_run(a_dir, a_res, b_dir, b_res, config):
  assert [r["mse"] for r in a_res["rows"]] == [r["mse"] for r in b_res["rows"]]
  a, b = _final_state(a_dir, config), _final_state(b_dir, config)
  assert jax.tree.structure(a.extra) == jax.tree.structure(b.extra)
  for x, y in zip(jax.tree.leaves((a.params, a.opt_state, a.extra)),
                  jax.tree.leaves((b.params, b.opt_state, b.extra))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  logs = lambda d: [json.loads(line) for line in open(d / "metrics.jsonl")]
  assert [r["step"] for r in logs(b_dir)] == [r["step"] for r in logs(a_dir)]
  assert [r["weights"] for r in logs(b_dir)] == [r["weights"] for r in logs(a_dir)]


@pytest.mark.parametrize("method", ["famo", "dwa", "nash_mtl", "gradvac"])
def test_a_killed_multitask_run_resumes_bitwise_with_its_balancer_state(tmp_path, method):
  """A run killed after its step-10 checkpoint (what a kill leaves: that checkpoint and no
  results) and restarted with the same command ends exactly where an uninterrupted run does:
  the balancer's state (FAMO's logits, DWA's loss history, Nash-MTL's weights, GradVac's
  targets) is saved and restored with the parameters."""
  ref, work = tmp_path / "ref", tmp_path / "killed"
  full = run(ref, method, checkpoint_every=10)
  assert jax.tree.leaves(_final_state(ref, tiny(method, checkpoint_every=10)).extra)
  shutil.copytree(ref, work)
  shutil.rmtree(work / "checkpoints" / "20")
  os.remove(work / "results.json")
  resumed = run(work, method, checkpoint_every=10)
  assert resumed["resumed_from_step"] == 10
  _assert_same_run(ref, full, work, resumed, tiny(method, checkpoint_every=10))


@pytest.mark.parametrize("method", ["famo", "gradvac"])
def test_a_multitask_run_extended_with_allow_config_change_equals_one_long_run(tmp_path,
                                                                              method):
  ref, work = tmp_path / "ref", tmp_path / "extended"
  full = run(ref, method, checkpoint_every=10)
  run(work, method, num_steps=10, checkpoint_every=10)
  config = tiny(method, checkpoint_every=10)
  with pytest.raises(_lib.ConfigMismatch, match="num_steps"):
    _lib.train_and_evaluate(config, str(work), multitask.build(config, _lib.make_optimizer(config)))
  extended = _lib.train_and_evaluate(config, str(work),
                                     multitask.build(config, _lib.make_optimizer(config)),
                                     allow_config_change=True)
  assert extended["resumed_from_step"] == 10 and extended["num_steps"] == 20
  _assert_same_run(ref, full, work, extended, config)

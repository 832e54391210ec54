"""experiments/multitask.py end to end on a tiny problem, and the Δm table built from its runs."""

import json
import os

import numpy as np
import pytest

from benchmarks import multitask_table
from experiments import common
from experiments import multitask
from experiments.configs import multitask as config_lib


def tiny(method, **overrides):
  c = config_lib.get_config(method)
  c.update(dict(dim=6, train_examples=256, val_examples=64, test_examples=64, batch_size=16,
                bottom=(8,), experts=2, expert=(4,), tower=(4,), num_steps=20, log_every=10,
                checkpoint_every=20, steps_per_call=10, progress=False))
  c.update(overrides)
  config = config_lib.resolve(c)
  common.check_config(config, config_lib.METHODS, meta=False)
  return config


def run(workdir, method, **overrides):
  config = tiny(method, **overrides)
  exp = multitask.build(config, common.make_optimizer(config))
  return common.train_and_evaluate(config, str(workdir), exp)


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
  from experiments import multitask_omniglot
  from experiments.configs import multitask_omniglot as omni_config
  from tests.test_omniglot import tiny_npz
  # Two background alphabets of 3 and 2 characters: the second's head has a masked output.
  tiny_npz(tmp_path / "o.npz", n_bg=5, background_alphabet=np.array(["A"] * 3 + ["B"] * 2))
  results = {}
  for m in ("mgda", "single_task"):
    c = omni_config.get_config(m)
    c.update(dict(data=str(tmp_path / "o.npz"), num_alphabets=2, filters=32, prompt_dim=2,
                  batch_size=4, num_steps=4, log_every=2, checkpoint_every=4, steps_per_call=2,
                  progress=False))
    config = omni_config.resolve(c)
    common.check_config(config, omni_config.METHODS, meta=False)
    exp = multitask_omniglot.build(config, common.make_optimizer(config))
    results[m] = common.train_and_evaluate(config, str(tmp_path / f"{m}_s0"), exp)
  rows = results["mgda"]["rows"]
  assert {(r["split"], r["domain"]) for r in rows} == {(s, a) for s in ("val", "test")
                                                      for a in ("A", "B")}
  assert results["mgda"]["characters"] == [3, 2]
  assert all(0 <= r["accuracy"] <= 1 for r in rows)
  table = multitask_intents_table.markdown(
      multitask_intents_table.load(str(tmp_path), "multitask_omniglot"))
  assert "| mgda |" in table

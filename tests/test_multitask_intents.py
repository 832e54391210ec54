"""experiments/multitask_intents/main.py on a tiny random BERT and generated data: the multi-task
stage for a method and the single-task baselines, aggregation and distillation rows, and the
table built from them."""

import warnings

import numpy as np
import pytest

from benchmarks import multitask_intents_table
from experiments import _lib
from experiments.multitask_intents import main as multitask_intents
from experiments.multitask_intents import config as config_lib
from tests.test_pretrained import WORDS, write_checkpoint, write_jsonl

DOMAINS = ("d0", "d1", "d2")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("mtl_intents")
  rng = np.random.default_rng(0)
  rows = [{"text": " ".join(rng.choice(WORDS, size=rng.integers(1, 5))), "intent": f"{d}_i{k}",
           "domain": d, "split": split}
          for d in DOMAINS for k in range(3)
          for split, n in (("train", 4), ("val", 2), ("test", 2)) for _ in range(n)]
  return {"encoder": write_checkpoint(str(root / "enc")),
          "data": write_jsonl(root / "data.jsonl", rows)}


def run(files, workdir, method, **overrides):
  c = config_lib.get_config(method)
  c.update(dict(encoder=files["encoder"], data=files["data"], heldout_domains=("d2",),
                train_per_intent=4, max_len=8, entry_layer=2, prompt_length=2, batch_size=4,
                num_steps=4, log_every=2, checkpoint_every=4, steps_per_call=2,
                transfer_per_intent=2, transfer_steps=2, distill_steps=2, progress=False))
  c.update(overrides)
  config = c
  config_lib.check(config)
  _lib.check_config(config, config_lib.METHODS, meta=False)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    exp = multitask_intents.build(config, _lib.make_optimizer(config))
    return _lib.train_and_evaluate(config, str(workdir), exp)


def test_every_stage_runs_and_the_table_reads_them(files, tmp_path):
  # famo with both later stages; single_task (the Δm baseline) without them.
  results = {m: run(files, tmp_path / f"{m}_s0", m, **({} if m == "famo" else
                                                        {"transfer_steps": 0, "distill_steps": 0}))
             for m in ("famo", "single_task")}
  for m, res in results.items():
    rows = res["rows"]
    mt = [r for r in rows if r["stage"] == "multitask"]
    assert {(r["split"], r["domain"]) for r in mt} == {(s, d) for s in ("val", "test")
                                                      for d in ("d0", "d1")}
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["f1"] <= 1 for r in rows)
    agg = [r for r in rows if r["stage"] == "aggregation"]
    dist = [r for r in rows if r["stage"] == "distillation"]
    if m == "single_task":
      assert not agg and not dist
    else:
      assert {r["init"] for r in agg} == {"mean", "weighted_mean", "mpt", "shared_part", "zero"}
      assert {r["domain"] for r in agg} == {"d2"}
      assert {(r["student"], r["domain"]) for r in dist} == {
          (s, d) for s in ("distilled", "hard_labels") for d in ("d0", "d1")}
    assert res["domains"] == ["d0", "d1"] and res["num_steps"] == 4
  table = multitask_intents_table.markdown(multitask_intents_table.load(str(tmp_path)))
  assert "| famo |" in table and "| single_task |" in table and "Distillation" in table
  famo_row = [line for line in table.splitlines() if line.startswith("| famo |")][0]
  assert "| - |" not in famo_row  # Δm against the single-task run is filled in


def test_unknown_heldout_domains_are_a_clear_error(files, tmp_path):
  with pytest.raises(ValueError, match="unknown domains"):
    run(files, tmp_path, "equal", heldout_domains=("nowhere",))

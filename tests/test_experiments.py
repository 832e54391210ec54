"""The experiment loop: end-to-end runs of the script, exact resume, faults and validation."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import mtpjax as mj
from experiments import _lib
from experiments._lib import config as common
from experiments.sinusoid import main as sinusoid
from experiments.sinusoid import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(num_steps=40, meta_batch_size=4, eval_tasks=20, eval_inner_steps=(0, 1, 3),
            log_every=10, checkpoint_every=10, hidden=(8,), progress=False, plot_tasks=2)


def tiny_config(**overrides):
  return common.configured(config_lib, **{**TINY, **overrides})


def run(workdir, **overrides):
  config = tiny_config(**overrides)
  _lib.check_config(config)
  exp = sinusoid.build(config, _lib.make_optimizer(config))._replace(plot=None)
  return _lib.train_and_evaluate(config, str(workdir), exp)


def cli(workdir, *args):
  return [sys.executable, "-m", "experiments.sinusoid", f"--workdir={workdir}"] + [
      f"--config.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY.items()
  ] + list(args)


def test_script_end_to_end_writes_every_artifact(tmp_path):
  out = subprocess.run(cli(tmp_path, "--config.algorithm=cavia"), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "mse" in out.stdout and "10-shot" in out.stdout
  for name in ("config.json", "metrics.jsonl", "results.json", "training_curve.png", "fits.png",
               "mse_vs_inner_steps.png"):
    assert os.path.exists(tmp_path / name), name
  results = json.loads((tmp_path / "results.json").read_text())
  for field in ("benchmark", "algorithm", "config", "num_steps", "meta_steps_per_sec",
                "compile_seconds", "wall_seconds", "backend", "jax_version", "rows"):
    assert field in results
  assert results["algorithm"] == "cavia" and results["num_steps"] == 40
  assert 0 < results["compile_seconds"] < results["wall_seconds"]  # JAX's compile events
  assert results["config"]["inner_lr"] == 1.0 and results["config"]["context_dim"] == 5  # resolved
  assert {r["inner_steps"] for r in results["rows"]} == {0, 1, 3}
  assert all(r["episodes"] == 20 and r["ci95"] > 0 for r in results["rows"])
  logged = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged] == [10, 20, 30, 40]


@pytest.mark.parametrize("algorithm", sorted(config_lib.ALGORITHM_DEFAULTS))
def test_every_algorithm_runs_in_the_experiment_and_meta_training_lowers_the_loss(tmp_path,
                                                                              algorithm):
  # The protocol's network and init (a tiny net learns too slowly to show it in 300 steps).
  res = run(tmp_path, algorithm=algorithm, num_steps=300, meta_batch_size=8, eval_tasks=20,
            log_every=100, checkpoint_every=300, hidden=(40, 40))
  assert all(np.isfinite(r["mean"]) for r in res["rows"])
  logged = [json.loads(l)["loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(logged) == 3 and logged[-1] < logged[0]


def test_the_same_seed_gives_the_same_figures(tmp_path):
  a = run(tmp_path / "a", num_steps=20, eval_tasks=10)
  b = run(tmp_path / "b", num_steps=20, eval_tasks=10)
  assert [r["mean"] for r in a["rows"]] == [r["mean"] for r in b["rows"]]


@pytest.mark.parametrize("steps_per_call", [5, 4])
def test_several_steps_per_call_train_the_same_run(tmp_path, steps_per_call):
  # 23 steps, 5 per call: calls end at 5, 10 (log, checkpoint), ..., 20, then 3 to step 23.
  # 4 per call divides neither log_every nor checkpoint_every (10): calls of 4, 4, 2, ...
  one = run(tmp_path / "one", num_steps=23, eval_tasks=10)
  five = run(tmp_path / "five", num_steps=23, eval_tasks=10, steps_per_call=steps_per_call)
  assert five["num_steps"] == 23
  rows = [[json.loads(l) for l in open(tmp_path / w / "metrics.jsonl")] for w in ("one", "five")]
  assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [10, 20, 23]
  assert sorted(int(d) for d in os.listdir(tmp_path / "five" / "checkpoints")
                if d.isdigit()) == [10, 20, 23]
  np.testing.assert_allclose([r["loss"] for r in rows[1]], [r["loss"] for r in rows[0]],
                             rtol=1e-4)
  np.testing.assert_allclose([r["mean"] for r in five["rows"]], [r["mean"] for r in one["rows"]],
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("algorithm", sorted(config_lib.ALGORITHM_DEFAULTS))
def test_get_config_holds_every_protocol_default_in_one_pass(algorithm):
  # No field waits for a later pass: the argument's algorithm chooses them (big_vision's habit).
  c = config_lib.get_config(algorithm)
  assert config_lib.get_config(f"algorithm={algorithm}").to_dict() == c.to_dict()
  assert c.algorithm == algorithm and None not in c.to_dict().values()
  for name, value in config_lib.ALGORITHM_DEFAULTS[algorithm].items():
    assert c[name] == value, name
  assert c.train_queries == c.shots == 10
  c.shots = 5                   # a derived default follows the field it derives from ...
  assert c.train_queries == 5 and c.to_dict()["train_queries"] == 5
  c.train_queries = 7           # ... until it is set itself
  assert (c.shots, c.train_queries) == (5, 7)


def test_get_config_refuses_an_unknown_argument():
  with pytest.raises(ValueError, match="config.algorithm must be one of"):
    config_lib.get_config("mamll")
  with pytest.raises(ValueError, match="unknown field 'ways'"):
    config_lib.get_config("algorithm=maml,ways=5")


def test_sigkill_and_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
  steps = dict(num_steps=400, log_every=20, checkpoint_every=60)
  args = [f"--config.{k}={v}" for k, v in steps.items()]
  ref = subprocess.run(cli(tmp_path / "ref", *args), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert ref.returncode == 0, ref.stderr[-3000:]

  work = tmp_path / "killed"

  def start_and_stop_after(pattern, sig):
    proc = subprocess.Popen(cli(work, *args), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # stop once a checkpoint exists
      if any(glob.glob(str(work / "checkpoints" / p)) for p in pattern):
        break
      time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be stopped; raise num_steps"
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert not os.path.exists(work / "results.json")
    return proc.returncode, err

  # Ctrl-C: a checkpoint of the last finished step, one line saying how to resume, exit 130.
  rc, err = start_and_stop_after(["[6-9]0", "1[0-9]0"], signal.SIGINT)
  assert rc == 130, err[-3000:]
  assert "Run the same command to resume" in err and "Traceback" not in err
  interrupted_at = int(err.split("interrupted at step ")[1].split(":")[0])
  assert os.path.isdir(work / "checkpoints" / str(interrupted_at)), err
  # Then a crash (SIGKILL) of the resumed run, after a later checkpoint.
  rc, _ = start_and_stop_after([str(s) for s in range(60, 400, 60) if s > interrupted_at],
                               signal.SIGKILL)
  assert rc == -signal.SIGKILL

  resumed = subprocess.run(cli(work, *args), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from step" in resumed.stderr
  r_ref = json.loads((tmp_path / "ref" / "results.json").read_text())
  r_res = json.loads((work / "results.json").read_text())
  assert r_res["resumed_from_step"] is not None and r_res["resumed_from_step"] < 400
  assert [r["mean"] for r in r_res["rows"]] == [r["mean"] for r in r_ref["rows"]]
  assert [r["ci95"] for r in r_res["rows"]] == [r["ci95"] for r in r_ref["rows"]]
  # Parameters: compare the final checkpoints leaf by leaf, bitwise.
  config = tiny_config(**steps)
  exp = sinusoid.build(config, _lib.make_optimizer(config))
  like = exp.learner.init(exp.params, key=jax.random.key(0))
  a = mj.Checkpointer(str(tmp_path / "ref" / "checkpoints")).restore(like)[0]
  b = mj.Checkpointer(str(work / "checkpoints")).restore(like)[0]
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The metrics log has each step once, as an uninterrupted run would.
  logged = [json.loads(l)["step"] for l in (work / "metrics.jsonl").read_text().splitlines()]
  assert logged == list(range(20, 401, 20))


@pytest.mark.parametrize("where", ["log_row", "write_row"])
def test_a_ctrl_c_between_a_log_step_and_its_row_loses_no_row(tmp_path, monkeypatch, where):
  # Ctrl-C while the host waits for a log step's metrics (log_row) or while its row is being
  # written: the checkpoint is of that step, so the row must be in the log before it.
  from experiments._lib import guards, loop
  real = getattr(loop._Loop, where)
  calls = []

  def interrupt_once_at_step_20(step):
    if step == 20 and not calls:
      calls.append(step)
      raise KeyboardInterrupt

  def log_row(self, window, step, speed, state):
    interrupt_once_at_step_20(step)
    return real(self, window, step, speed, state)

  def write_row(row, mfile, history):
    interrupt_once_at_step_20(row["step"])
    return real(row, mfile, history)

  monkeypatch.setattr(loop._Loop, where,
                      log_row if where == "log_row" else staticmethod(write_row))
  with pytest.raises(guards.Interrupted) as e:
    run(tmp_path, num_steps=40, log_every=10, checkpoint_every=30)
  assert e.value.step == 20 and calls == [20]
  assert os.path.isdir(tmp_path / "checkpoints" / "20")
  run(tmp_path, num_steps=40, log_every=10, checkpoint_every=30)
  logged = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert logged == [10, 20, 30, 40]


def test_resume_with_a_different_config_is_an_error_unless_overridden(tmp_path):
  first = run(tmp_path, num_steps=20)
  config = tiny_config(num_steps=30, inner_lr=0.02)
  exp = sinusoid.build(config, _lib.make_optimizer(config))._replace(plot=None)
  with pytest.raises(_lib.ConfigMismatch, match="inner_lr"):
    _lib.train_and_evaluate(config, str(tmp_path), exp)
  # Fields that change neither the training nor the test tasks (only speed, output, memory)
  # are not a mismatch: a run whose evaluation ran out of memory resumes with a smaller chunk.
  old = {"inner_lr": 0.01, "eval_batch_size": 50, "progress": True, "xla_flags": ""}
  assert _lib.workdir.config_diff(old, old | {"eval_batch_size": 10, "progress": False,
                                         "xla_flags": "--xla_cpu_enable_fast_math=false"}) == []
  assert _lib.workdir.config_diff(old, old | {"inner_lr": 0.02}) == [
      "inner_lr: checkpoint 0.01 vs now 0.02"]
  # The checkpoint the resume starts from carries the first run's compile time ...
  like = exp.learner.init(exp.params, key=jax.random.key(0))
  _, meta, _ = mj.Checkpointer(str(tmp_path / "checkpoints")).restore(like)
  assert meta["timing"]["compile_seconds"] == first["compile_seconds"] > 0
  results = _lib.train_and_evaluate(config, str(tmp_path), exp, allow_config_change=True)
  assert results["num_steps"] == 30 and results["resumed_from_step"] == 20
  # ... and the resumed run reports the sum over both processes' compilations.
  assert results["compile_seconds"] > first["compile_seconds"]


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  run(tmp_path, num_steps=30)
  ckpts = sorted(int(os.path.basename(p)) for p in glob.glob(str(tmp_path / "checkpoints" / "*"))
                 if os.path.basename(p).isdigit())
  assert ckpts[-1] == 30
  latest = tmp_path / "checkpoints" / "30"
  for path in glob.glob(str(latest / "state" / "**" / "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
  config = tiny_config(num_steps=30)
  exp = sinusoid.build(config, _lib.make_optimizer(config))._replace(plot=None)
  with caplog.at_level("WARNING"):
    results = _lib.train_and_evaluate(config, str(tmp_path), exp)
  assert results["resumed_from_step"] == 20
  assert "unreadable" in caplog.text
  # None usable: a clear error.
  for step in glob.glob(str(tmp_path / "checkpoints" / "*")):
    for path in glob.glob(os.path.join(step, "state", "**", "*"), recursive=True):
      if os.path.isfile(path):
        with open(path, "wb") as f:
          f.write(b"garbage")
  from mtpjax import CheckpointError
  with pytest.raises(CheckpointError, match="no usable checkpoint"):
    _lib.train_and_evaluate(config, str(tmp_path), exp)


def test_nan_guard_stops_and_names_the_step_checkpoint_and_cause(tmp_path):
  with pytest.raises(_lib.NonFiniteError) as err:
    run(tmp_path, inner_lr=1e6, num_steps=40, checkpoint_every=1000)
  msg = str(err.value)
  assert "meta-step 10" in msg and "inner_lr" in msg and "grad_norm" in msg and "no checkpoint yet" in msg


def test_nan_skip_policy_skips_bad_updates_and_reports_them(tmp_path):
  # An absurd inner lr makes every update non-finite: the parameters stay finite (untouched)
  # until the limit of consecutive skips is reached; then the guard stops the run.
  with pytest.raises(_lib.NonFiniteError, match="after skipped updates"):
    run(tmp_path, inner_lr=1e15, nan_policy="skip", nan_max_skips=5)
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["skipped_updates"] >= 5 and not np.isfinite(rows[-1]["loss"])


@pytest.mark.parametrize("field,value,match", [
    ("algorithm", "mamll", "config.algorithm must be one of"),
    ("num_steps", -1, "config.num_steps must be >= 0"),
    ("inner_steps", -1, "config.inner_steps must be >= 0"),
    ("inner_lr", 0.0, "config.inner_lr must be > 0"),
    ("outer_lr", -1e-3, "config.outer_lr must be > 0"),
    ("meta_batch_size", 0, "config.meta_batch_size must be > 0"),
    ("eval_inner_steps", (1, -2), "config.eval_inner_steps"),
    ("nan_policy", "ignore", "config.nan_policy"),
    ("steps_per_call", 0, "config.steps_per_call must be a positive int"),
])
def test_config_errors_name_the_field(field, value, match):
  c = config_lib.get_config()
  c.update(TINY)
  c[field] = value
  with pytest.raises(ValueError, match=match):
    _lib.check_config(c)


def test_prompt_algorithms_need_a_prompt():
  config = tiny_config(algorithm="cavia", context_dim=0)
  with pytest.raises(ValueError, match="context_dim must be > 0"):
    sinusoid.build(config, _lib.make_optimizer(config))


def test_config_xla_flags_reach_xla_before_the_backend_starts_and_warn_after(monkeypatch):
  # In a fresh process the flag must change what XLA compiles: with YNNPACK's elementwise
  # fusion on (the batch-norm Omniglot setting), a plain multiply-add becomes a YNNPACK fusion.
  flag = "--xla_cpu_experimental_ynn_fusion_type=+eltwise"
  probe = ("import jax, jax.numpy as jnp\n"
           "from experiments import _lib\n"
           "_lib.env.apply_xla_flags(FLAGS)\n"
           "x = jnp.ones((512, 512))\n"
           "text = jax.jit(lambda a, b: a * b + 1.0).lower(x, x).compile().as_text()\n"
           "print('ynn' if '__ynn_fusion' in text else 'plain')\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  outs = []
  for flags in (flag, ""):
    out = subprocess.run([sys.executable, "-c", probe.replace("FLAGS", repr(flags))], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    outs.append(out.stdout.strip())
  if jax.default_backend() == "cpu":
    assert outs == ["ynn", "plain"]
  # In this process the backend has started: the flags cannot take effect, and the user is told.
  jax.numpy.zeros(1).block_until_ready()
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  with pytest.warns(UserWarning, match="not applied: JAX's backend has already started"):
    _lib.env.apply_xla_flags(flag)
  assert "XLA_FLAGS" not in os.environ
  # A flag the user already set wins over the config's.
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
  _lib.env.apply_xla_flags(flag)  # nothing to add, so no warning either
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"

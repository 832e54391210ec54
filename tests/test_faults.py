"""Inputs that used to give a plausible wrong number (or a misleading message) now give a clear
error or warning; the experiment loop guards divergence, locks and repairs its workdir."""

import inspect
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtpjax as mj
from experiments import _lib
from test_experiments import ROOT, cli, run, sinusoid, tiny_config


# --- Checks at the public API, from shapes and dtypes -----------------------------------------

def test_mse_refuses_to_broadcast_predictions_against_targets():
  with pytest.raises(ValueError, match=r"mse: predictions \(5, 1\) and targets \(5,\).*y\[:, None\]"):
    mj.mse(jnp.zeros((5, 1)), jnp.zeros((5,)))
  assert mj.mse(jnp.ones((5, 1)), jnp.zeros((5, 1))) == 1.0


def test_cross_entropy_and_accuracy_need_integer_labels_shaped_like_the_logits():
  logits = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match="labels must be integers"):
    mj.cross_entropy(logits, jnp.zeros((4,)))
  with pytest.raises(ValueError, match=r"labels \(4, 1\) must have the shape .* \(4,\)"):
    mj.cross_entropy(logits, jnp.zeros((4, 1), jnp.int32))
  with pytest.raises(ValueError, match="accuracy: labels"):
    mj.accuracy(logits, jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="one weight per class"):
    mj.weighted_cross_entropy(logits, jnp.zeros((4,), jnp.int32), jnp.ones((2,)))


def test_a_head_with_fewer_outputs_than_the_ways_is_an_error_before_compiling():
  data = jnp.zeros((10, 4, 3))
  family = mj.tasks.classification.episodes(data, ways=5, shots=1, queries=1)
  model = mj.compose(mj.mlp((8,)), mj.linear_head(3))
  params = model.init(jax.random.key(0), jnp.zeros((5, 3)))
  loss_fn = mj.supervised(model.apply, mj.cross_entropy)
  learner = mj.meta_learner(loss_fn, optax.sgd(0.1), sample=family.sample)
  with pytest.raises(ValueError, match=r"3 outputs per example, .* ways=5.*linear_head\(5\)"):
    learner.init(params, key=jax.random.key(1))
  good = mj.compose(mj.mlp((8,)), mj.linear_head(5))
  ok = mj.meta_learner(mj.supervised(good.apply, mj.cross_entropy), optax.sgd(0.1),
                       sample=family.sample)
  p5 = good.init(jax.random.key(0), jnp.zeros((5, 3)))
  ok.init(p5, key=jax.random.key(1))
  with pytest.raises(ValueError, match="evaluate .*3 outputs per example"):  # a wider test family
    mj.evaluate(mj.meta_learner(loss_fn, optax.sgd(0.1)), params, family.sample,
                key=jax.random.key(0), num_tasks=2)


def test_token_ids_past_the_vocabulary_are_caught_when_the_data_set_is_built():
  data = np.ones((4, 3, 5), np.int32)
  data[2, 1, 3] = 200
  with pytest.raises(ValueError, match=r"token ids must lie in \[0, 200\).*found \[1, 200\]"):
    mj.tasks.classification.episodes(data, ways=2, shots=1, queries=1, vocab_size=200)
  mj.tasks.classification.episodes(data, ways=2, shots=1, queries=1, vocab_size=201)


def test_nan_in_the_data_is_caught_when_the_data_set_is_built():
  data = np.zeros((4, 3, 2), np.float32)
  data[1, 2, 0] = np.nan
  with pytest.raises(ValueError, match="1 values are NaN or inf"):
    mj.tasks.classification.episodes(data, ways=2, shots=1, queries=1)


def test_counts_that_are_not_integers_name_the_argument():
  loss_fn = lambda p, b: jnp.sum(p["shared"])
  with pytest.raises(ValueError, match=r"inner_steps must be an integer, got 1.5"):
    mj.meta_learner(loss_fn, optax.sgd(0.1), inner_steps=1.5)
  with pytest.raises(ValueError, match="meta_batch_size must be an integer"):
    mj.meta_learner(loss_fn, optax.sgd(0.1), meta_batch_size=2.0)
  learner = mj.meta_learner(loss_fn, optax.sgd(0.1))
  sample = mj.tasks.sinusoid.family(2, 2).sample
  with pytest.raises(ValueError, match="num_tasks must be positive, got 0"):
    mj.evaluate(learner, {"shared": jnp.zeros(1)}, sample, key=jax.random.key(0), num_tasks=0)
  with pytest.raises(ValueError, match="inner_steps must be a non-empty list of integer"):
    mj.evaluate(learner, {"shared": jnp.zeros(1)}, sample, key=jax.random.key(0),
                inner_steps=(0, 1.5))


def test_check_finite_names_the_metric_and_step():
  host = mj.check_finite({"loss": jnp.array([1.0, 2.0])})
  assert host["loss"].tolist() == [1.0, 2.0]
  with pytest.raises(FloatingPointError, match=r"loss = nan at step index 2 of 3.*learning rate"):
    mj.check_finite({"loss": jnp.array([1.0, 2.0, jnp.nan]), "grad_norm": jnp.ones(3)})
  with pytest.raises(FloatingPointError, match=r"above 1000 .*loss = 2e\+06"):
    mj.check_finite({"loss": jnp.float32(2e6)}, max_abs=1e3)


def test_omniglot_files_that_are_not_npz_archives_name_the_path(tmp_path):
  empty = tmp_path / "empty.npz"
  empty.write_bytes(b"")
  with pytest.raises(ValueError, match=f"{empty} is not a readable .npz"):
    mj.tasks.omniglot.load_npz(str(empty))
  text = tmp_path / "text.npz"
  text.write_text("hello")
  with pytest.raises(ValueError, match=f"{text} is not a readable .npz"):
    mj.tasks.omniglot.load_npz(str(text))
  objects = tmp_path / "objects.npz"
  np.savez(objects, background=np.array([{"a": 1}], dtype=object),
           evaluation=np.zeros(1), background_alphabet=np.zeros(1),
           background_character=np.zeros(1), evaluation_alphabet=np.zeros(1),
           evaluation_character=np.zeros(1))
  with pytest.raises(ValueError, match=f"{objects} holds pickled"):
    mj.tasks.omniglot.load_npz(str(objects))


# --- The experiment loop ----------------------------------------------------------------------

def test_a_finite_but_diverging_loss_stops_the_run_naming_step_values_and_cause(tmp_path):
  config = tiny_config(num_steps=40)
  exp = sinusoid.build(config, _lib.make_optimizer(config))._replace(plot=None)
  real = exp.learner

  def exploding_run(state, n):  # the real step, with a loss that grows 100x every 10 steps
    state, metrics = real.run(state, n)
    return state, {**metrics, "loss": metrics["loss"] * 100.0 ** (state.step // 10)}

  exp = exp._replace(learner=real._replace(run=exploding_run))
  with pytest.raises(_lib.NonFiniteError) as err:
    _lib.train_and_evaluate(config, str(tmp_path), exp)
  msg = str(err.value)
  assert "diverging" in msg and "meta-step 30" in msg and "divergence_factor=1000" in msg
  assert "(step 10)" in msg and "inner_lr" in msg


def test_result_tables_print_huge_and_nonfinite_values_legibly():
  rows = [{"metric": "mse", "setting": "10-shot", "inner_steps": 1, "mean": 11824245.4589,
           "ci95": 1151626.6049, "episodes": 600, "nonfinite": 0},
          {"metric": "mse", "setting": "10-shot", "inner_steps": 10, "mean": float("nan"),
           "ci95": float("nan"), "episodes": 600, "nonfinite": 3}]
  table = _lib.results_table({"benchmark": "b", "algorithm": "maml", "num_steps": 1,
                                "meta_steps_per_sec": None, "backend": "cpu", "rows": rows})
  line = table.splitlines()[2]
  assert "1.182e+07" in line and "1.152e+06" in line and "1.182e+071.152" not in line
  assert "nan" in table.splitlines()[3]


def test_a_workdir_that_is_a_file_is_a_clear_error(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(ValueError, match="is a file, not a directory"):
    run(path)


def test_a_second_run_on_a_locked_workdir_exits_at_once_naming_the_first(tmp_path):
  with _lib.workdir_lock(str(tmp_path)):
    out = subprocess.run(cli(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert f"is in use by pid {os.getpid()} on host" in out.stderr
  assert not (tmp_path / "metrics.jsonl").exists()  # it did nothing


def test_a_stale_lock_of_a_dead_run_is_taken_over_with_a_warning(tmp_path):
  (tmp_path / ".lock").write_text("pid 999999 on host elsewhere")
  with pytest.warns(UserWarning, match="taking over the lock left by pid 999999"):
    run(tmp_path, num_steps=10)
  assert (tmp_path / ".lock").read_text() == ""  # released at the end


def test_resume_skips_damaged_metric_lines_and_names_them(tmp_path):
  run(tmp_path, num_steps=20)
  path = tmp_path / "metrics.jsonl"
  good = path.read_bytes().splitlines()
  path.write_bytes(b"\n".join([good[0], b'{"step": "ten", "loss": 1.0}', b"\xff\xfe not utf-8",
                              b'{"step": 15, "lo', good[1]]) + b"\n")
  config = tiny_config(num_steps=30)
  exp = sinusoid.build(config, _lib.make_optimizer(config))._replace(plot=None)
  with pytest.warns(UserWarning, match=r"skipped 3 damaged line\(s\).*line 2, 3, 4"):
    results = _lib.train_and_evaluate(config, str(tmp_path), exp, allow_config_change=True)
  assert results["num_steps"] == 30
  steps = [json.loads(l)["step"] for l in path.read_text().splitlines()]
  assert steps == [10, 20, 30]


def test_an_unknown_config_field_is_one_clear_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "experiments.sinusoid", f"--workdir={tmp_path}",
                        "--config.num_step=5"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2
  assert "unknown config field 'num_step'; did you mean --config.num_steps?" in out.stderr
  assert "Traceback" not in out.stderr


def test_a_training_curve_of_one_point_draws_a_marker_and_says_why(tmp_path):
  with pytest.warns(UserWarning, match="single point"):
    paths = _lib.plot_training_curve(str(tmp_path), [{"step": 5, "loss": 1.0}], metric="mse",
                                       title="t")
  assert os.path.getsize(paths[0]) > 0


# --- Documentation ------------------------------------------------------------------------------

def _public(module):
  for name in dir(module):
    if name.startswith("_"):
      continue
    obj = getattr(module, name)
    if isinstance(obj, types.ModuleType):
      continue
    if inspect.isfunction(obj) or inspect.isclass(obj):
      yield f"{module.__name__}.{name}", obj


def test_every_public_function_and_class_has_a_docstring():
  modules = [mj, mj.pretrained, mj.prompts, mj.tasks.text, mj.tasks.classification,
             mj.tasks.sinusoid, mj.tasks.omniglot, mj.tasks.tokens]
  # NamedTuples and dataclasses without a docstring get one generated from their fields,
  # "Name(field, ...)": that counts as missing.
  missing = sorted(name for m in modules for name, obj in _public(m)
                   if obj.__module__.startswith("mtpjax") and (
                       not (obj.__doc__ or "").strip()
                       or obj.__doc__.strip().startswith(obj.__name__ + "(")))
  assert not missing, f"no docstring: {missing}"


def test_too_few_omniglot_characters_name_the_config_field(tmp_path):
  from experiments.omniglot import main as omniglot_exp
  from experiments.omniglot import config as omniglot_config
  from test_omniglot import tiny_npz
  tiny_npz(tmp_path / "o.npz")
  c = omniglot_config.get_config()
  c.data_path = str(tmp_path / "o.npz")
  with pytest.raises(ValueError, match=r"config.num_train_characters=1200 must be in \(0, 5\)"):
    omniglot_exp.load_split(c)


def test_the_quick_start_figures_are_bitwise_reproducible_at_a_reduced_step_count(tmp_path):
  # The README's quick start is `python -m experiments.sinusoid` with the default config: the
  # same seed must give the same figures, bit for bit, so the README's row can be checked.
  from experiments.sinusoid import config as config_lib

  def once(workdir):
    c = config_lib.get_config()
    c.update(num_steps=30, eval_tasks=20, log_every=10, checkpoint_every=30, progress=False)
    exp = sinusoid.build(c, _lib.make_optimizer(c))._replace(plot=None)
    return _lib.train_and_evaluate(c, str(workdir), exp)

  a, b = once(tmp_path / "a"), once(tmp_path / "b")
  assert [(r["mean"], r["ci95"]) for r in a["rows"]] == [(r["mean"], r["ci95"]) for r in b["rows"]]
  assert a["config"]["hidden"] == [40, 40] and a["config"]["meta_batch_size"] == 25


# --- A reused workdir never loses a run -----------------------------------------------------

def _files(workdir):
  """Every file under workdir with its bytes' size and mtime: what a refused run must keep."""
  out = {}
  for root, _, names in os.walk(workdir):
    for n in names:
      p = os.path.join(root, n)
      if n != ".lock":
        out[os.path.relpath(p, workdir)] = (os.path.getsize(p), os.path.getmtime(p))
  return out


def test_a_shape_changing_config_on_a_used_workdir_touches_nothing_and_the_run_resumes(tmp_path):
  first = run(tmp_path, num_steps=20)
  before = _files(tmp_path)
  config = tiny_config(num_steps=20, hidden=(16,))
  exp = sinusoid.build(config, _lib.make_optimizer(config))._replace(plot=None)
  with pytest.raises(_lib.ConfigMismatch, match=r"hidden: checkpoint \[8\] vs now \[16\]"):
    _lib.train_and_evaluate(config, str(tmp_path), exp)
  # Allowed config changes cannot change shapes: the arrays are named, nothing is moved.
  with pytest.raises(_lib.ConfigMismatch, match=r"params/shared.*saved \(1, 8\).*this run "
                                                r"\(1, 16\)"):
    _lib.train_and_evaluate(config, str(tmp_path), exp, allow_config_change=True)
  assert _files(tmp_path) == before
  assert not os.path.exists(str(tmp_path / "checkpoints") + ".unreadable")
  again = run(tmp_path, num_steps=20)         # the original command still resumes
  assert again["resumed_from_step"] == 20 and again["rows"] == first["rows"]


def test_another_experiment_on_a_used_workdir_is_refused_before_any_work(tmp_path):
  run(tmp_path, num_steps=10)
  before = _files(tmp_path)
  out = subprocess.run([sys.executable, "-m", "experiments.multitask", f"--workdir={tmp_path}",
                        "--config.num_steps=2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "holds a checkpoint (step 10) of a run with another config" in out.stderr
  assert "Traceback" not in out.stderr
  assert _files(tmp_path) == before


def test_input_errors_on_the_command_line_are_one_line_and_exit_2(tmp_path):
  bad = subprocess.run(cli(tmp_path, "--config.meta_batch_size=0"), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert bad.stderr.strip().splitlines()[-1].startswith("error: config.meta_batch_size")
  # An integer field refuses 40.5 (a layer of 40 units would be built without a word).
  frac = subprocess.run(cli(tmp_path, "--config.hidden=(40.5,)"), cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert frac.returncode == 2 and "Traceback" not in frac.stderr
  assert "error: config.hidden must be a list of integers" in frac.stderr and "40.5" in frac.stderr
  assert not (tmp_path / "config.json").exists()
  # --help lists every field with its default, and the methods.
  helped = subprocess.run([sys.executable, "-m", "experiments.intents", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert helped.returncode == 0
  assert "--config.num_steps=" in helped.stdout and "prompt_pool" in helped.stdout
  ro = tmp_path / "ro"
  ro.mkdir()
  os.chmod(ro, 0o500)
  try:
    if os.access(ro, os.W_OK):
      return  # root ignores permissions: nothing more to check here
    out = subprocess.run(cli(ro / "run"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "Permission denied" in out.stderr
  finally:
    os.chmod(ro, 0o700)


def test_a_full_disk_is_said_first_and_leaves_no_partial_checkpoint(tmp_path, monkeypatch,
                                                                     capsys):
  import errno
  from experiments._lib import cli as cli_lib
  partial = tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp-1234"
  partial.mkdir(parents=True)

  def work():  # as orbax reports it: the OSError wrapped in another error
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as e:
      raise RuntimeError("Event loop is closed") from e

  with pytest.raises(SystemExit) as exit_:
    cli_lib._guarded(work, str(tmp_path))
  assert exit_.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith("error: no space left on device while writing to")
  assert not partial.exists()

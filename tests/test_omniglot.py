"""Omniglot loaders and splits, on tiny data the tests write, and on the real file if present."""

import os
import shutil
import subprocess

import jax
import numpy as np
import pytest

import mtpjax as mj
from mtpjax.tasks import omniglot
from experiments._lib import config as common, env

REAL = os.path.join(env.data_dir(), omniglot.NPZ_NAME)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_npz(path, n_bg=3, n_ev=2, **override):
  rng = np.random.default_rng(0)
  arrays = {}
  for s, n in (("background", n_bg), ("evaluation", n_ev)):
    arrays[s] = rng.integers(0, 256, size=(n, 20, 28, 28), dtype=np.uint8)
    arrays[f"{s}_nearest"] = (arrays[s] > 127).astype(np.uint8) * 255
    arrays[f"{s}_alphabet"] = np.array([f"Alpha{s[0]}"] * n)
    arrays[f"{s}_character"] = np.array([f"character{i:02d}" for i in range(n)])
    arrays[f"{s}_vinyals"] = np.array((["train", "val", "test"] * n)[:n])
  arrays.update(override)
  np.savez(path, **arrays)
  return arrays


def test_load_npz_and_its_errors(tmp_path):
  arrays = tiny_npz(tmp_path / "o.npz")
  data = omniglot.load_npz(str(tmp_path / "o.npz"))
  np.testing.assert_array_equal(data["images"], np.concatenate([arrays["background"],
                                                                arrays["evaluation"]]))
  assert data["num_background"] == 3 and list(data["vinyals"][:3]) == ["train", "val", "test"]
  near = omniglot.load_npz(str(tmp_path / "o.npz"), nearest=True)
  assert set(np.unique(near["images"])) <= {0, 255}
  with pytest.raises(FileNotFoundError, match="no file at .*missing.npz"):
    omniglot.load_npz(str(tmp_path / "missing.npz"))
  tiny_npz(tmp_path / "bad.npz", evaluation=np.zeros((2, 20, 28), np.uint8))
  with pytest.raises(ValueError, match=r"evaluation has shape \(2, 20, 28\)"):
    omniglot.load_npz(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "partial.npz", background=arrays["background"])
  with pytest.raises(ValueError, match="lacks arrays"):
    omniglot.load_npz(str(tmp_path / "partial.npz"))
  np.savez(tmp_path / "pickled.npz", background=np.array([{"a": 1}], dtype=object))
  with pytest.raises(ValueError):  # object arrays need pickle, which is never allowed
    omniglot.load_npz(str(tmp_path / "pickled.npz"))


def write_release(root, drawings=20):
  """A tiny release: 2 alphabets x 2 characters per set, 105x105 black-on-white PNGs."""
  from PIL import Image
  rng = np.random.default_rng(1)
  for s in omniglot.SETS:
    for a in range(2):
      for c in range(2):
        d = root / f"images_{s}" / f"Alphabet_{a}" / f"character{c + 1:02d}"
        d.mkdir(parents=True)
        for k in range(drawings):
          ink = rng.random((105, 105)) < 0.1
          Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).convert("1").save(
              d / f"{a}{c}_{k + 1:02d}.png")


def test_load_images_from_folders_and_zips(tmp_path):
  write_release(tmp_path)
  data = omniglot.load_images(str(tmp_path))
  assert data["images"].shape == (8, 20, 28, 28) and data["images"].dtype == np.uint8
  assert data["num_background"] == 4 and list(data["alphabet"][:2]) == ["Alphabet_0"] * 2
  # Ink becomes 255: about 10% ink, so the mean is far below the inverted 90%.
  assert 5 < data["images"].mean() < 80
  zipped = tmp_path / "zipped"
  zipped.mkdir()
  for s in omniglot.SETS:
    shutil.make_archive(str(zipped / f"images_{s}"), "zip", root_dir=tmp_path,
                        base_dir=f"images_{s}")
  np.testing.assert_array_equal(omniglot.load_images(str(zipped))["images"], data["images"])
  with pytest.raises(FileNotFoundError, match="images_background"):
    omniglot.load_images(str(tmp_path / "nowhere"))


def test_a_character_with_missing_drawings_is_an_error(tmp_path):
  write_release(tmp_path, drawings=3)
  with pytest.raises(ValueError, match="has 3 drawings; expected 20"):
    omniglot.load_images(str(tmp_path))


def test_rotations_are_new_classes():
  imgs = np.random.default_rng(0).integers(0, 256, size=(3, 20, 28, 28), dtype=np.uint8)
  rot = omniglot.rotations(imgs)
  assert rot.shape == (12, 20, 28, 28)
  for i in range(3):
    for k in range(4):
      np.testing.assert_array_equal(rot[4 * i + k], np.rot90(imgs[i], k, axes=(-2, -1)))
  flat = {rot[j].tobytes() for j in range(12)}
  assert len(flat) == 12


def test_maml_split_is_disjoint_and_fixed_by_seed(tmp_path):
  tiny_npz(tmp_path / "o.npz", n_bg=6, n_ev=4)
  data = omniglot.load_npz(str(tmp_path / "o.npz"))
  a = omniglot.maml_split(data, seed=1, num_train=7)
  b = omniglot.maml_split(data, seed=1, num_train=7)
  c = omniglot.maml_split(data, seed=2, num_train=7)
  assert not set(a["train_chars"]) & set(a["test_chars"])
  assert len(a["train_chars"]) == 7 and len(a["test_chars"]) == 3
  assert a["train"].shape == (28, 20, 28, 28) and a["test"].shape == (12, 20, 28, 28)
  np.testing.assert_array_equal(a["train"], b["train"])
  assert not np.array_equal(a["train_chars"], c["train_chars"])
  v = omniglot.vinyals_split(data)
  assert sum(len(v[f"{p}_chars"]) for p in ("train", "val", "test")) == 10


@pytest.mark.skipif(not os.path.exists(REAL), reason=f"real Omniglot not at {REAL}")
def test_real_omniglot_splits_and_episodes():
  data = omniglot.load_npz(REAL)
  assert data["images"].shape == (1623, 20, 28, 28)
  split = omniglot.maml_split(data)
  assert split["train"].shape[0] == 4800 and split["test"].shape[0] == 4 * 423
  v = omniglot.vinyals_split(data, rotate=False)
  assert [len(v[f"{p}_chars"]) for p in ("train", "val", "test")] == [1028, 172, 423]
  fam = mj.tasks.classification.episodes(split["test"], ways=20, shots=5, queries=15)
  ep = jax.jit(fam.sample)(jax.random.key(0))
  assert ep.support.x.shape == (100, 28, 28) and ep.query.x.shape == (300, 28, 28)


# ProtoNet and the Omniglot experiment -----------------------------------------------------

def test_protonet_prototypes_and_loss_match_a_hand_computation():
  import jax.numpy as jnp
  embed = lambda params, x: x @ params["shared"]["w"]
  pn = mj.protonet(embed, ways=3)
  params = {"shared": {"w": jax.random.normal(jax.random.key(0), (4, 2))}}
  sx = jax.random.normal(jax.random.key(1), (6, 4))
  sy = jnp.array([2, 0, 1, 0, 2, 1])
  protos = pn.task_repr(params, mj.Batch(sx, sy))
  z = np.asarray(embed(params, sx))
  want = np.stack([z[np.asarray(sy) == c].mean(0) for c in range(3)])
  np.testing.assert_allclose(protos, want, rtol=1e-5, atol=1e-6)
  qx = jax.random.normal(jax.random.key(2), (5, 4))
  qy = jnp.array([0, 1, 2, 1, 0])
  zq = np.asarray(embed(params, qx))
  d = ((zq[:, None, :] - want[None]) ** 2).sum(-1)
  logp = -d - np.log(np.exp(-d).sum(-1, keepdims=True))
  np.testing.assert_allclose(pn.loss_fn(params, mj.Batch(qx, qy), task_repr=protos),
                             -logp[np.arange(5), np.asarray(qy)].mean(), rtol=1e-4)
  with pytest.raises(ValueError, match="needs the prototypes"):
    pn.loss_fn(params, mj.Batch(qx, qy))


def test_protonet_as_a_zero_step_meta_learner_differentiates_through_the_prototypes():
  import jax.numpy as jnp
  import optax
  embed = lambda params, x: jnp.tanh(x @ params["shared"]["w"])
  pn = mj.protonet(embed, ways=3)
  params = {"shared": {"w": jax.random.normal(jax.random.key(0), (4, 3))}}
  data = jax.random.normal(jax.random.key(1), (6, 5, 4))
  fam = mj.tasks.classification.episodes(data, ways=3, shots=2, queries=2)
  learner = mj.meta_learner(pn.loss_fn, optax.sgd(0.1), inner_steps=0, meta_batch_size=1,
                            task_repr=pn.task_repr, sample=fam.sample)
  ep = fam.sample(jax.random.key(3))
  direct = lambda p: pn.loss_fn(p, ep.query, task_repr=pn.task_repr(p, ep.support))
  got = jax.grad(lambda p: learner.task_loss(p, ep)[0])(params)
  np.testing.assert_allclose(got["shared"]["w"], jax.grad(direct)(params)["shared"]["w"],
                             rtol=1e-5)
  # ...and the gradient really flows through the prototypes (not only the query embedding).
  frozen = lambda p: pn.loss_fn(p, ep.query,
                                task_repr=jax.lax.stop_gradient(pn.task_repr(p, ep.support)))
  assert not np.allclose(jax.grad(frozen)(params)["shared"]["w"], got["shared"]["w"])


def _experiment_config(tmp_path, **overrides):
  from experiments.omniglot import config as config_lib
  tiny_npz(tmp_path / "o.npz", n_bg=8, n_ev=4)
  return common.configured(
      config_lib, **dict(data_path=str(tmp_path / "o.npz"), num_train_characters=8,
                         num_steps=2, meta_batch_size=2, eval_tasks=4, log_every=1,
                         checkpoint_every=2, filters=8, norm_groups=4, progress=False,
                         **overrides))


def test_omniglot_script_runs_two_steps_end_to_end(tmp_path):
  import json
  import sys
  tiny_npz(tmp_path / "o.npz", n_bg=8, n_ev=4)
  args = dict(data_path=tmp_path / "o.npz", num_train_characters=8, num_steps=2,
              meta_batch_size=2, eval_tasks=4, log_every=2, filters=8, norm_groups=4,
              progress=False, algorithm="cavia", context_dim=4,
              steps_per_call=2)  # both steps in one jitted call (learner.run)
  cmd = [sys.executable, "-m", "experiments.omniglot", f"--workdir={tmp_path / 'run'}"] + [
      f"--config.{k}={v}" for k, v in args.items()]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  run = tmp_path / "run"
  for name in ("config.json", "metrics.jsonl", "results.json", "training_curve.png",
               "accuracy_vs_inner_steps.png", "episode_predictions.png"):
    assert (run / name).exists(), name
  results = json.loads((run / "results.json").read_text())
  assert results["num_steps"] == 2 and results["config"]["inner_lr"] == 3.0  # cavia's defaults
  assert results["config"]["inner_steps"] == 2
  settings = {r["setting"] for r in results["rows"]}
  assert settings == {"5-way 1-shot", "5-way 5-shot"}
  acc = [r for r in results["rows"] if r["metric"] == "accuracy"]
  assert {r["inner_steps"] for r in acc} == {0, 1, 3} and all(0 <= r["mean"] <= 1 for r in acc)
  assert all(r["episodes"] == 4 for r in results["rows"])


def test_omniglot_protonet_trains_and_tests_on_more_ways_than_it_trained_on(tmp_path):
  from experiments import _lib
  from experiments.omniglot import main as experiment
  config = _experiment_config(tmp_path, algorithm="protonet", eval_settings=("5x1", "10x2"))
  _lib.check_config(config, ("protonet",))
  exp = experiment.build(config, _lib.make_optimizer(config))._replace(plot=None)
  results = _lib.train_and_evaluate(config, str(tmp_path / "run"), exp)
  acc = {r["setting"]: r for r in results["rows"] if r["metric"] == "accuracy"}
  assert set(acc) == {"5-way 1-shot", "10-way 2-shot"}
  assert all(r["inner_steps"] == 0 and r["episodes"] == 4 for r in acc.values())


@pytest.mark.parametrize("field,value,match", [
    ("eval_settings", ("5-1",), "'WAYSxSHOTS'"),
    ("eval_settings", ("10x1",), "can only be tested on 5-way"),
    ("eval_settings", ("99x1",), "ways <= 16"),
    ("context_dim", 0, "context_dim must be > 0"),
    ("zero_head", True, "zero_head with algorithm 'cavia'.*must adapt"),
    ("zero_head", True, "ProtoNet has no head"),
])
def test_omniglot_config_errors_name_the_field(tmp_path, field, value, match):
  from experiments import _lib
  from experiments.omniglot import main as experiment
  overrides = {field: value}
  if field == "context_dim" or "cavia" in match:
    overrides["algorithm"] = "cavia"
  if "ProtoNet" in match:
    overrides["algorithm"] = "protonet"
  config = _experiment_config(tmp_path, **overrides)
  with pytest.raises(ValueError, match=match):
    experiment.build(config, _lib.make_optimizer(config))


def test_omniglot_config_rejects_an_unknown_algorithm():
  from experiments.omniglot import config as config_lib
  with pytest.raises(ValueError, match="config.algorithm must be one of"):
    config_lib.get_config("matching_nets")


def test_omniglot_batch_norm_runs_ask_for_ynnpack_elementwise_fusion_and_others_do_not():
  from experiments.omniglot import config as config_lib
  resolved = {}
  for norm, flags in (("batch_transductive", None), ("group", None), ("batch_transductive", "")):
    fields = dict(norm=norm) if flags is None else dict(norm=norm, xla_flags=flags)
    resolved[(norm, flags)] = common.configured(config_lib, **fields).xla_flags
  assert resolved == {("batch_transductive", None): config_lib.BATCH_NORM_XLA_FLAGS,
                      ("group", None): "", ("batch_transductive", ""): ""}


def test_omniglot_zero_head_keeps_the_head_at_zero_while_the_network_learns(tmp_path):
  from experiments import _lib
  from experiments.omniglot import main as experiment
  config = _experiment_config(tmp_path, algorithm="fomaml", zero_head=True)
  exp = experiment.build(config, _lib.make_optimizer(config))
  state = exp.learner.init(exp.params, key=jax.random.key(0))
  for _ in range(2):
    state, _ = exp.learner.step(state)
  for leaf in jax.tree.leaves(state.params["head"]):
    np.testing.assert_array_equal(leaf, 0.0)
  kernel = state.params["shared"]["conv_1"]["kernel"]
  assert not np.allclose(kernel, exp.params["shared"]["conv_1"]["kernel"])


def _protocol_commands(tmp_path, script, runs, **env):
  """Runs a benchmarks/ protocol script with a fake interpreter that records its arguments."""
  fake, log = tmp_path / "fake_python", tmp_path / "args.log"
  fake.write_text("#!/bin/sh\nprintf '%s\\t' \"$@\" >> \"$ARGS_LOG\"\necho >> \"$ARGS_LOG\"\n")
  fake.chmod(0o755)
  env = dict(os.environ, PYTHON=str(fake), ARGS_LOG=str(log), RUNS=str(tmp_path / "runs"), **env)
  subprocess.run(["bash", os.path.join(ROOT, "benchmarks", script), *runs], env=env, check=True,
                 capture_output=True)
  commands = []
  for line in log.read_text().splitlines():
    args = line.rstrip("\t").split("\t")
    config = dict(a[len("--config."):].split("=", 1) for a in args if a.startswith("--config."))
    commands.append(config | {"workdir": args[args.index("--workdir") + 1]})
  return commands


def test_cpu_protocol_run_names_compose_their_suffixes(tmp_path):
  bn20, zero, proto = _protocol_commands(tmp_path, "omniglot_cpu_protocol.sh",
                                         ["maml_bn_20way", "fomaml_zero", "protonet"])
  assert bn20["workdir"].endswith("runs/maml_bn_20way")
  assert (bn20["algorithm"], bn20["norm"], bn20["ways"]) == ("maml", "batch_transductive", "20")
  assert bn20["eval_batch_size"] == "10"
  assert "ways" not in zero and "norm" not in zero
  assert (zero["algorithm"], zero["zero_head"]) == ("fomaml", "True")
  assert proto["algorithm"] == "protonet" and "20x5" in proto["eval_settings"]
  assert {c["num_steps"] for c in (bn20, zero, proto)} == {"2000"}


def test_full_protocol_run_names_give_algorithm_ways_shots_and_norm(tmp_path):
  bn, anil = _protocol_commands(tmp_path, "omniglot_full_protocol.sh",
                                ["maml_bn_5w1s", "anil_20w5s"], STEPS="3", EVAL_TASKS="10")
  assert (bn["algorithm"], bn["ways"], bn["shots"], bn["norm"]) == ("maml", "5", "1",
                                                                     "batch_transductive")
  assert (anil["algorithm"], anil["ways"], anil["shots"]) == ("anil", "20", "5")
  assert "norm" not in anil
  assert bn["num_steps"] == anil["num_steps"] == "3" and bn["eval_tasks"] == "10"
  with pytest.raises(subprocess.CalledProcessError):
    _protocol_commands(tmp_path, "omniglot_full_protocol.sh", ["maml_5way"])

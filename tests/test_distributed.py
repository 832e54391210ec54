"""The experiments on several devices and processes: the mesh comes from the environment, two
processes through jax.distributed give the single-process figures, and their checkpoint
restores on another device count."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import mtpjax as mj
from experiments import _lib
from experiments.sinusoid import main as sinusoid
from tests.test_experiments import ROOT, TINY, tiny_config
from experiments._lib import env as env_lib

# 8 tasks: they divide over 1, 2 and 4 devices.
FLAGS = dict(TINY, meta_batch_size=8)


def run_in_process(workdir, devices, monkeypatch):
  monkeypatch.setenv("MTPJAX_DEVICES", str(devices))
  config = tiny_config(meta_batch_size=8)
  exp = sinusoid.build(config, _lib.make_optimizer(config))._replace(plot=None)
  return _lib.train_and_evaluate(config, str(workdir), exp), exp


def means(results):
  return np.array([r["mean"] for r in results["rows"]])


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch_two_processes(workdir):
  """The README's multi-host launch on one machine: 2 processes of 2 CPU devices each."""
  port = free_port()
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MTPJAX_DEVICES")}
  # Same XLA settings as this process, but 2 devices per process instead of 4 forced ones.
  flags = os.environ.get("XLA_FLAGS", "").split()
  env["XLA_FLAGS"] = " ".join(f for f in flags if "device_count" not in f)
  env.update(JAX_NUM_CPU_DEVICES="2", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
             JAX_NUM_PROCESSES="2")
  args = [sys.executable, "-m", "experiments.sinusoid", f"--workdir={workdir}"] + [
      f"--config.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
      for k, v in FLAGS.items()]
  procs = [subprocess.Popen(args, cwd=ROOT, env=dict(env, JAX_PROCESS_ID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def test_an_experiment_on_4_devices_and_on_2_processes_gives_the_1_device_figures(
    tmp_path, monkeypatch):
  one, exp1 = run_in_process(tmp_path / "one", 1, monkeypatch)
  four, _ = run_in_process(tmp_path / "four", 4, monkeypatch)
  assert (one["mesh"], one["processes"]) == (None, 1)
  assert (four["mesh"], four["processes"]) == ({"tasks": 4}, 1)
  np.testing.assert_allclose(means(four), means(one), rtol=1e-5)

  outs = launch_two_processes(tmp_path / "two")
  assert "wrote" in outs[0][0] and "wrote" not in outs[1][0]  # the first process writes
  two = json.loads((tmp_path / "two" / "results.json").read_text())
  assert (two["mesh"], two["processes"], two["process_devices"]) == ({"tasks": 4}, 2, 2)
  assert len(two["devices"]) == 4
  np.testing.assert_allclose(means(two), means(one), rtol=1e-5)
  assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 4

  # The checkpoint written by 2 processes of 2 devices restores on 1 process of 4 devices
  # and of 1 device, with identical values, equal to the 1-device run's to float rounding.
  restored = []
  for devices in (4, 1):
    monkeypatch.setenv("MTPJAX_DEVICES", str(devices))
    config = tiny_config(meta_batch_size=8)
    exp = sinusoid.build(config, _lib.make_optimizer(config))
    like = exp.learner.init(exp.params, key=jax.random.key(0))
    state, _, step = mj.Checkpointer(str(tmp_path / "two" / "checkpoints")).restore(like)
    assert step == 40
    assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == devices
    restored.append(jax.device_get(state._replace(key=jax.random.key_data(state.key))))
  for a, b in zip(jax.tree.leaves(restored[0]), jax.tree.leaves(restored[1])):
    np.testing.assert_array_equal(a, b)
  like = exp1.learner.init(exp1.params, key=jax.random.key(0))
  ref, _, _ = mj.Checkpointer(str(tmp_path / "one" / "checkpoints")).restore(like)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               restored[1].params, jax.device_get(ref.params))


def test_the_mesh_from_the_environment_and_its_clear_errors(monkeypatch):
  assert jax.device_count() == 4
  env = {}
  assert env_lib.mesh_from_env(8, environ=env).shape == {"tasks": 4}
  assert env_lib.mesh_from_env(8, environ={"MTPJAX_DEVICES": "2"}).shape == {"tasks": 2}
  assert env_lib.mesh_from_env(3, environ={"MTPJAX_DEVICES": "1"}) is None
  with pytest.raises(ValueError, match=r"config.meta_batch_size=6 does not divide over the 4 "
                                       r"devices.*e.g. 8\).*MTPJAX_DEVICES to a divisor of 6"):
    env_lib.mesh_from_env(6, "config.meta_batch_size", environ=env)
  with pytest.raises(ValueError, match="MTPJAX_DEVICES=5: this run sees 4 device"):
    env_lib.mesh_from_env(8, environ={"MTPJAX_DEVICES": "5"})
  with pytest.raises(ValueError, match="MTPJAX_DEVICES must be an integer"):
    env_lib.mesh_from_env(8, environ={"MTPJAX_DEVICES": "all"})
  # A "model" axis: the tasks split over the other one (6 divides over 4 / 2 = 2 devices).
  assert env_lib.mesh_from_env(6, environ={"MTPJAX_MODEL_SHARDS": "2"}).shape == {"tasks": 2,
                                                                             "model": 2}
  with pytest.raises(ValueError, match="MTPJAX_MODEL_SHARDS=3 must be a positive divisor of "
                                       "the 4 device"):
    env_lib.mesh_from_env(8, environ={"MTPJAX_MODEL_SHARDS": "3"})
  # A multi-process launch needs its three variables; none set is a single process.
  assert env_lib.initialize_from_env(environ={}) is False
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES, JAX_PROCESS_ID not set"):
    env_lib.initialize_from_env(environ={"JAX_COORDINATOR_ADDRESS": "localhost:1"})
  with pytest.raises(ValueError, match=r"JAX_PROCESS_ID=2 must be in \[0, JAX_NUM_PROCESSES=2\)"):
    env_lib.initialize_from_env(environ={"JAX_COORDINATOR_ADDRESS": "localhost:1",
                                    "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"})


def test_an_experiment_whose_meta_batch_does_not_divide_fails_before_compiling(monkeypatch):
  monkeypatch.setenv("MTPJAX_DEVICES", "4")
  config = tiny_config(meta_batch_size=6)
  with pytest.raises(ValueError, match="config.meta_batch_size=6 does not divide over the 4"):
    sinusoid.build(config, _lib.make_optimizer(config))



def test_a_model_axis_run_gives_the_1_device_figures_and_restores_on_other_layouts(
    tmp_path, monkeypatch):
  """MTPJAX_MODEL_SHARDS=2: the 64x64 kernel and its Adam moments split over 2 devices; the
  run's figures equal one device's and its checkpoint restores replicated, with equal values."""
  def run(workdir, devices, shards):
    monkeypatch.setenv("MTPJAX_DEVICES", str(devices))
    monkeypatch.setenv("MTPJAX_MODEL_SHARDS", str(shards))
    config = tiny_config(meta_batch_size=8, hidden=(64, 64))
    exp = sinusoid.build(config, _lib.make_optimizer(config))
    if workdir is None:
      return exp
    return _lib.train_and_evaluate(config, str(workdir), exp._replace(plot=None)), exp

  one, _ = run(tmp_path / "one", 1, 1)
  split, exp = run(tmp_path / "split", 4, 2)
  assert split["mesh"] == {"tasks": 2, "model": 2}
  np.testing.assert_allclose(means(split), means(one), rtol=1e-5)
  like = exp.learner.init(exp.params, key=jax.random.key(0))
  ckpt = mj.Checkpointer(str(tmp_path / "split" / "checkpoints"))
  state, _, _ = ckpt.restore(like)
  kernel = max(jax.tree.leaves(state.params), key=lambda x: x.size)  # the 64x64 hidden layer
  assert kernel.shape == (64, 64) and kernel.addressable_shards[0].data.shape == (32, 64)
  values = []
  for devices in (4, 1):  # the same checkpoint, replicated on 4 devices and on 1
    other = run(None, devices, 1)
    restored, _, _ = ckpt.restore(other.learner.init(other.params, key=jax.random.key(0)))
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(restored.params))
    values.append(jax.device_get(restored.params))
  for a, b, c in zip(*(jax.tree.leaves(t) for t in (values[0], values[1],
                                                    jax.device_get(state.params)))):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)

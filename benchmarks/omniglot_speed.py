"""Speed: mtpjax's second-order MAML Omniglot meta-step against learn2learn, in one run.

The configuration of ../shared/BENCHMARKS.md section 4: 5-way 1-shot, Conv4 (64 filters,
GroupNorm with 32 groups; --norm batch_transductive gives both sides MAML's batch norm with
the statistics of the batch in hand), 32 tasks per meta-step, 1 inner SGD step at lr 0.4,
second order, Adam 1e-3, Q query images per class (1 by default: MAML's training protocol).

learn2learn runs in its own PyTorch environment (not a dependency of mtpjax), as a subprocess
(benchmarks/l2l_omniglot_step.py); the two alternate for --rounds rounds so that load drifts
hit both. Reported: mtpjax's compile time, the median seconds per meta-step of each, and their
ratio.

  .venv/bin/python -m benchmarks.omniglot_speed --peer_python /path/to/torch-venv/bin/python \
      [--queries 1] [--rounds 3] [--steps 5] [--steps_per_call 1] [--conv_impl auto] \
      [--norm group] [--xla_flags FLAGS] [--out DIR]

--steps_per_call K times mtpjax's `learner.run(state, K)` (K > 1: K meta-steps in one jitted
scan, so XLA allocates its temporaries once per call; 1: the jitted step), divided by K;
--steps is then the number of calls per round. The reported compile time is what JAX records for tracing, lowering and
XLA's compilation (jax.monitoring events), not the first call, which also runs K steps.

--xla_flags are appended to $XLA_FLAGS before JAX starts (default: the Omniglot experiment's
choice, i.e. YNNPACK's elementwise fusion with batch norm and nothing with GroupNorm; "" for
none). Without --peer_python only mtpjax is timed. To compare allocators, preload one for both
sides: the peer subprocess inherits LD_PRELOAD.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import script_steps_per_sec
from experiments._lib import compile_timer
from experiments._lib.env import apply_xla_flags
from experiments.omniglot.config import default_xla_flags
import mtpjax as mj

WAYS, SHOTS, INNER_LR, OUTER_LR = 5, 1, 0.4, 1e-3


def mtpjax_learner(data, *, tasks, queries, conv_impl, norm="group"):
  family = mj.tasks.classification.episodes(jnp.asarray(data, jnp.float32) / 255.0, ways=WAYS,
                                            shots=SHOTS, queries=queries)
  model = mj.compose(mj.conv4(conv_impl=conv_impl, norm=norm), mj.linear_head(WAYS))
  params = model.init(jax.random.key(0), jnp.zeros((WAYS, 28, 28)))
  loss_fn = mj.supervised(model.apply, mj.cross_entropy)
  learner = mj.meta_learner(loss_fn, optax.adam(OUTER_LR), algorithm="maml", inner_steps=1,
                            inner_lr=INNER_LR, meta_batch_size=tasks, sample=family.sample)
  return learner, learner.init(params, key=jax.random.key(1))


def time_steps(learner, state, calls, steps_per_call):
  """Seconds per meta-step of `calls` calls, each of `steps_per_call` meta-steps."""
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    state, metrics = learner.run(state, steps_per_call)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - start) / steps_per_call)
  return state, times


def time_peer(peer_python, data_file, args):
  cmd = [peer_python, "-m", "benchmarks.l2l_omniglot_step", "--data", data_file,
         "--steps", str(args.steps), "--tasks", str(args.tasks), "--queries", str(args.queries),
         "--norm", args.norm]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"peer failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
  return [json.loads(l)["seconds"] for l in out.stdout.splitlines() if l.startswith("{")]


def time_cli(steps, data_path):
  """Seconds per meta-step of the experiment script with its training defaults
  (steps_per_call, logging, the final checkpoint), only num_steps and the evaluation shortened."""
  data = [f"--config.data_path={data_path}"] if data_path else []
  return 1.0 / script_steps_per_sec("experiments.omniglot", f"--config.num_steps={steps}",
                                    "--config.eval_tasks=10", "--config.eval_inner_steps=0",
                                    *data)


# main is a script's body (flags, then each side timed in turn, then the printout): splitting it
# would only move its sequence into functions called once each.
def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--peer_python", default=None)
  parser.add_argument("--tasks", type=int, default=32)
  parser.add_argument("--queries", type=int, default=1)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--steps_per_call", type=int, default=1,
                      help="mtpjax meta-steps per jitted call (learner.run; 1 is the plain step)")
  parser.add_argument("--conv_impl", default="auto")
  parser.add_argument("--norm", default="group", choices=("group", "batch_transductive"),
                      help="Conv4's normalisation, on both sides")
  parser.add_argument("--xla_flags", default=None,
                      help="appended to $XLA_FLAGS (default: the Omniglot experiment's choice)")
  parser.add_argument("--data", default=None, help="omniglot28.npz (default: the shared data)")
  parser.add_argument("--cli_steps", type=int, default=0,
                      help="also time, once per round, `python -m experiments.omniglot` with "
                           "its defaults for this many meta-steps (a multiple of 100 keeps "
                           "its log and checkpoint at the end)")
  parser.add_argument("--out", default="runs/speed")
  args = parser.parse_args()
  if args.steps_per_call < 1:
    parser.error(f"--steps_per_call must be >= 1, got {args.steps_per_call}")

  if args.xla_flags is None:
    args.xla_flags = default_xla_flags(args.norm)
  apply_xla_flags(args.xla_flags)
  data = mj.tasks.omniglot.load_npz(args.data)["images"][:1200]  # meta-training characters
  learner, state = mtpjax_learner(data, tasks=args.tasks, queries=args.queries,
                                  conv_impl=args.conv_impl, norm=args.norm)
  with compile_timer() as compiled:
    start = time.perf_counter()
    state, metrics = learner.run(state, args.steps_per_call)
    jax.block_until_ready(metrics)
    first_call_s = time.perf_counter() - start
  print(f"mtpjax: compile + first call ({args.steps_per_call} meta-step(s)) {first_call_s:.1f} s "
        f"(backend {jax.default_backend()}, conv_impl {args.conv_impl}, norm {args.norm}, "
        f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})", flush=True)

  ours, peer, cli = [], [], []
  faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # this process: mtpjax only
  with tempfile.TemporaryDirectory() as tmp:
    data_file = os.path.join(tmp, "omniglot_train.npy")
    np.save(data_file, data)
    for r in range(args.rounds):
      state, t = time_steps(learner, state, args.steps, args.steps_per_call)
      ours += t
      line = f"round {r + 1}/{args.rounds}: mtpjax {statistics.median(t):.3f} s/step"
      if args.peer_python:
        t = time_peer(args.peer_python, data_file, args)
        peer += t
        line += f", learn2learn {statistics.median(t):.3f} s/step"
      if args.cli_steps:
        cli.append(time_cli(args.cli_steps, args.data))
        line += f", experiments.omniglot {cli[-1]:.3f} s/step"
      print(line, flush=True)

  faults = ((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
            / (len(ours) * args.steps_per_call))
  print(f"mtpjax: {faults:,.0f} minor page faults per timed meta-step", flush=True)
  compile_s = compiled["seconds"]
  print(f"mtpjax: compile {compile_s:.1f} s (trace + lower + XLA; the first call less "
        f"{args.steps_per_call} median step(s): "
        f"{first_call_s - args.steps_per_call * statistics.median(ours):.1f} s)", flush=True)
  result = {"config": vars(args), "compile_s": compile_s, "first_call_s": first_call_s,
            "mtpjax_s": ours,
            "mtpjax_minor_faults_per_step": faults,
            "mtpjax_median_s": statistics.median(ours), "device": str(jax.devices()[0]),
            "jax": jax.__version__}
  summary = f"mtpjax {result['mtpjax_median_s']:.3f} s/step"
  if peer:
    result.update(learn2learn_s=peer, learn2learn_median_s=statistics.median(peer),
                  speedup=statistics.median(peer) / statistics.median(ours))
    summary += (f", learn2learn {result['learn2learn_median_s']:.3f} s/step: mtpjax is "
                f"{result['speedup']:.2f}x learn2learn's speed")
  if cli:
    result.update(cli_s=cli, cli_median_s=statistics.median(cli))
    summary += f"; experiments.omniglot (defaults) {result['cli_median_s']:.3f} s/step"
    if peer:
      result["cli_speedup"] = statistics.median(peer) / statistics.median(cli)
      summary += f": {result['cli_speedup']:.2f}x learn2learn's speed"
  print(summary)
  os.makedirs(args.out, exist_ok=True)
  norm = "" if args.norm == "group" else f"_{args.norm}"
  path = os.path.join(args.out, (f"omniglot_speed_q{args.queries}_{args.conv_impl}"
                                f"_k{args.steps_per_call}{norm}.json"))
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  sys.exit(main())

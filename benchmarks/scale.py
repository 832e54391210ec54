"""How the meta-step scales: tasks/s against meta-batch size, inner steps and device count;
compile time; memory; second order against first order; remat on and off.

The step is Omniglot's MAML step (Conv4, 64 filters, group norm, 5-way 1-shot, 5 queries
per class, Adam) on episodes of random 28x28 images drawn on the device (the speed does not
depend on the pixels, so the script needs no data). Each device count runs in its own
process (the CPU's device count is fixed when XLA starts: --xla_force_host_platform_device_count
on the CPU; the visible GPUs on a GPU machine), which prints one JSON row per configuration.

Two grids:
- speed: meta-steps/s and tasks/s of the jitted step (`learner.run` of --steps_per_call
  steps, the experiments' loop) for every meta-batch size x device count, at 1 inner step,
  second order;
- memory: for 1, 5 and 20 inner steps, second and first order, remat off / on: compile time
  and the compiled step's temporary memory (XLA's memory_analysis; on a GPU also the peak of
  `memory_stats()` after running it).

  .venv/bin/python -m benchmarks.scale [--devices 1,4] [--meta_batch 4,8,16,32] [--out runs/scale]
  .venv/bin/python -m benchmarks.scale --markdown runs/scale/scale.json    (the README's tables; redraws
                                                                  the plot)

On the CPU, forced devices share the machine's cores: N devices cannot run N times faster
than one on a 2-core machine; the figure measures the sharded program's overhead and what
parallelism the cores give.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WAYS, SHOTS, QUERIES = 5, 1, 5


def build(meta_batch, inner_steps, *, first_order=False, remat=False, mesh=None):
  import jax
  import optax
  import mtpjax as mj

  model = mj.compose(mj.conv4(), mj.linear_head(WAYS))
  params = model.init(jax.random.key(0), jax.numpy.zeros((WAYS, 28, 28)))

  def sample(key):  # one 5-way episode of random images, labels 0..4
    ks, kq = jax.random.split(key)
    ys = jax.numpy.repeat(jax.numpy.arange(WAYS), SHOTS)
    yq = jax.numpy.repeat(jax.numpy.arange(WAYS), QUERIES)
    return mj.Episode(mj.Batch(jax.random.uniform(ks, (WAYS * SHOTS, 28, 28)), ys),
                      mj.Batch(jax.random.uniform(kq, (WAYS * QUERIES, 28, 28)), yq))

  learner = mj.meta_learner(mj.supervised(model.apply, mj.cross_entropy), optax.adam(1e-3),
                            algorithm="fomaml" if first_order else "maml",
                            inner_steps=inner_steps, inner_lr=0.4, meta_batch_size=meta_batch,
                            sample=sample, remat=remat, mesh=mesh)
  return learner, learner.init(params, key=jax.random.key(1))


def measure(learner, state, *, steps_per_call, calls, run_it=True):
  import jax
  from experiments._lib import compile_timer

  with compile_timer() as compiled:
    exe = jax.jit(lambda s: learner.step(s)).lower(state).compile()
  row = {"compile_s": compiled["seconds"],
         "temp_bytes": int(exe.memory_analysis().temp_size_in_bytes)}
  if not run_it:
    return row
  # One step a call: the executable just compiled; more: the loop's (learner.run, a scan).
  call = exe if steps_per_call == 1 else lambda s: learner.run(s, steps_per_call)
  state, m = call(state)
  jax.block_until_ready(m)
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    state, m = call(state)
    jax.block_until_ready(m)
    times.append((time.perf_counter() - start) / steps_per_call)
  row["step_s"] = statistics.median(times)
  stats = jax.devices()[0].memory_stats()  # None on the CPU
  if stats and "peak_bytes_in_use" in stats:
    row["peak_bytes"] = int(stats["peak_bytes_in_use"])
  return row


def worker(args):
  """Runs in a process with args.worker_devices devices; prints JSON rows."""
  import jax
  import mtpjax as mj

  n = jax.device_count()
  mesh = mj.task_mesh() if n > 1 else None
  for b in args.meta_batch:
    if b % n:
      continue
    learner, state = build(b, 1, mesh=mesh)
    row = measure(learner, state, steps_per_call=args.steps_per_call, calls=args.calls)
    row.update(grid="speed", devices=n, meta_batch=b, inner_steps=1, order="second",
               remat=False, backend=jax.default_backend(), device=str(jax.devices()[0]))
    print(json.dumps(row), flush=True)
  if n > 1:
    return
  for k in args.inner_steps:
    for order in ("second", "first"):
      for remat in (False, True):
        learner, state = build(args.memory_batch, k, first_order=order == "first", remat=remat)
        row = measure(learner, state, steps_per_call=1, calls=args.memory_calls,
                      run_it=args.memory_calls > 0)
        row.update(grid="memory", devices=1, meta_batch=args.memory_batch, inner_steps=k,
                   order=order, remat=remat, backend=jax.default_backend())
        print(json.dumps(row), flush=True)


def spawn(devices, args):
  # The flag sets the CPU's device count only; on a GPU machine the worker uses the visible
  # GPUs (set CUDA_VISIBLE_DEVICES to choose them), and its rows record how many. This
  # process never starts a backend, so it holds no accelerator memory the worker needs.
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  cmd = [sys.executable, "-m", "benchmarks.scale", "--worker_devices", str(devices)] + [
      a for a in sys.argv[1:] if not a.startswith("--worker_devices")]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True)
  if out.returncode:
    sys.exit(f"worker with {devices} devices failed:\n{out.stderr[-3000:]}")
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def markdown(result) -> str:
  rows = result["rows"]
  speed = [r for r in rows if r["grid"] == "speed"]
  base = {r["meta_batch"]: r for r in speed if r["devices"] == 1}
  out = [f"Device: {result['device']}, jax {result['jax']}, {result['cpus']} CPU cores.", "",
         "| devices | meta-batch | meta-steps/s | tasks/s | vs 1 device | compile (s) | "
         "temporary memory |", "|---|---|---|---|---|---|---|"]
  for r in sorted(speed, key=lambda r: (r["meta_batch"], r["devices"])):
    rel = (f"{base[r['meta_batch']]['step_s'] / r['step_s']:.2f}x"
           if r["meta_batch"] in base else "-")
    out.append(f"| {r['devices']} | {r['meta_batch']} | {1 / r['step_s']:.2f} | "
               f"{r['meta_batch'] / r['step_s']:.1f} | {rel} | {r['compile_s']:.1f} | "
               f"{r['temp_bytes'] / 2**20:.1f} MiB |")
  mem = [r for r in rows if r["grid"] == "memory"]
  if mem:
    out += ["", f"Meta-batch {mem[0]['meta_batch']}, one device:", "",
            "| inner steps | order | remat | compile (s) | temporary memory | vs no remat | "
            "meta-steps/s |", "|---|---|---|---|---|---|---|"]
    plain = {(r["inner_steps"], r["order"]): r for r in mem if not r["remat"]}
    for r in sorted(mem, key=lambda r: (r["inner_steps"], r["order"] != "second", r["remat"])):
      ratio = r["temp_bytes"] / plain[(r["inner_steps"], r["order"])]["temp_bytes"]
      speed_s = f"{1 / r['step_s']:.2f}" if "step_s" in r else "-"
      out.append(f"| {r['inner_steps']} | {r['order']} | {'on' if r['remat'] else 'off'} | "
                 f"{r['compile_s']:.1f} | {r['temp_bytes'] / 2**20:.1f} MiB | {ratio:.2f} | "
                 f"{speed_s} |")
  return "\n".join(out)


def plot(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = result["rows"]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  speed = [r for r in rows if r["grid"] == "speed"]
  for d in sorted({r["devices"] for r in speed}):
    rs = sorted((r for r in speed if r["devices"] == d), key=lambda r: r["meta_batch"])
    axes[0].plot([r["meta_batch"] for r in rs], [r["meta_batch"] / r["step_s"] for r in rs],
                 "o-", label=f"{d} device{'s' if d > 1 else ''}")
  axes[0].set(xlabel="meta-batch (tasks)", ylabel="tasks/s", xscale="log",
              title="Conv4 MAML step, 1 inner step")
  batches = sorted({r["meta_batch"] for r in speed})
  axes[0].set_xticks(batches, [str(b) for b in batches])
  axes[0].minorticks_off()
  axes[0].legend()
  mem = [r for r in rows if r["grid"] == "memory"]
  for order in ("second", "first"):
    for remat in (False, True):
      rs = sorted((r for r in mem if r["order"] == order and r["remat"] == remat),
                  key=lambda r: r["inner_steps"])
      if rs:
        axes[1].plot([r["inner_steps"] for r in rs], [r["temp_bytes"] / 2**20 for r in rs],
                     "o-" if remat else "s--",
                     label=f"{order} order, remat {'on' if remat else 'off'}")
  axes[1].set(xlabel="inner steps", ylabel="compiled temporary memory (MiB)",
              title="memory of the meta-step")
  axes[1].legend(fontsize=8)
  fig.suptitle(f"{result['device']} ({result['cpus']} CPU cores), jax {result['jax']}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ints = lambda s: [int(v) for v in s.split(",")]
  parser.add_argument("--devices", type=ints, default=[1, 4],
                      help="device counts (on the CPU, forced host devices)")
  parser.add_argument("--meta_batch", type=ints, default=[4, 8, 16, 32])
  parser.add_argument("--inner_steps", type=ints, default=[1, 5, 20],
                      help="inner steps of the memory grid")
  parser.add_argument("--memory_batch", type=int, default=4,
                      help="meta-batch of the memory grid")
  parser.add_argument("--memory_calls", type=int, default=1,
                      help="timed steps per memory-grid configuration (0: compile only)")
  parser.add_argument("--steps_per_call", type=int, default=4)
  parser.add_argument("--calls", type=int, default=3, help="timed calls of the speed grid")
  parser.add_argument("--out", default="runs/scale")
  parser.add_argument("--markdown", help="print the tables of a saved scale.json and exit")
  parser.add_argument("--worker_devices", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.markdown:  # also redraws the plot beside the saved result
    with open(args.markdown) as f:
      result = json.load(f)
    print(markdown(result))
    plot(result, os.path.join(os.path.dirname(args.markdown), "scale.png"))
    return
  if args.worker_devices:
    worker(args)
    return
  import jax
  rows = []
  for d in args.devices:
    print(f"running with {d} device(s) ...", file=sys.stderr, flush=True)
    rows += spawn(d, args)
  result = {"rows": rows, "device": rows[0].get("device", "?") if rows else "?",
            "jax": jax.__version__, "cpus": os.cpu_count(), "argv": sys.argv[1:]}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "scale.json"), "w") as f:
    json.dump(result, f, indent=2)
  plot(result, os.path.join(args.out, "scale.png"))
  print(markdown(result))
  print(f"wrote {args.out}/scale.json and scale.png")


if __name__ == "__main__":
  main()

"""Memory per device of a meta-step through a pretrained encoder whose weights are split over
a "model" mesh axis (`mj.task_mesh(model=M)`, $MTPJAX_MODEL_SHARDS in the experiments).

The step: all-MiniLM-L6-v2 (22.7 M weights) meta-learned with an input prompt of 8 tokens
(prompt-MAML with every role in the outer loop, so Adam keeps two moments of every weight),
second order, 1 inner step on the prompt, 5-way 1-shot CLINC150 episodes with 5 queries per
class, a cosine prototype head, meta-batch 4. For each size of the "model" axis, on the same
devices: the compiled step's arguments per device (parameters, optimizer state: what the
axis splits), its temporary memory, compile time and, with --steps > 0, meta-steps/s.
Compilation only by default (about 1.5 minutes per size on 2 CPU cores).

  .venv/bin/python -m benchmarks.model_axis [--devices 4] [--shards 1,2,4] [--steps 0] [--out runs/model_axis]
  .venv/bin/python -m benchmarks.model_axis --markdown runs/model_axis/model_axis.json   (the README table)

On the CPU the devices are forced host devices (--xla_force_host_platform_device_count) that
share the machine's cores, so the speed column measures the overhead of the gathers, not a
gain; the memory columns are what each device of a real mesh would hold.
"""

import argparse
import json
import os
import statistics
import sys
import time
from experiments._lib import env


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=4, help="forced CPU devices (CPU only)")
  parser.add_argument("--shards", default="1,2,4", help="sizes of the model axis")
  parser.add_argument("--steps", type=int, default=0, help="timed meta-steps per size (0: none)")
  parser.add_argument("--data_dir", default=None, help="default: ../shared/data")
  parser.add_argument("--out", default="runs/model_axis")
  parser.add_argument("--markdown", default=None, help="print the table of this JSON and exit")
  args = parser.parse_args()
  if args.markdown:
    with open(args.markdown) as f:
      print(markdown(json.load(f)))
    return
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  os.environ["XLA_FLAGS"] = " ".join(
      flags + [f"--xla_force_host_platform_device_count={args.devices}"])

  import jax
  import optax
  import mtpjax as mj
  from mtpjax import prompts
  from experiments._lib import compile_timer
  from benchmarks import pretrained_speed as ps

  data_dir = args.data_dir or env.data_dir()
  enc = mj.pretrained.load(os.path.join(data_dir, "all-MiniLM-L6-v2"))
  family = ps.clinc_train_family(enc, data_dir)
  model = mj.compose(enc.net(), None, prompts.static(ps.PROMPT_LEN, 384))
  head = mj.prototype_classifier(model, ps.WAYS, distance="cosine", scale=10.0)
  params = head.init(jax.random.key(0), family.sample(jax.random.key(0)).support.x)
  weights = sum(x.size for x in jax.tree.leaves(params))
  result = {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
            "jax": jax.__version__, "devices": jax.device_count(), "weights": int(weights),
            "config": vars(args), "rows": []}
  print(f"{jax.device_count()} devices ({jax.devices()[0]}), {weights / 1e6:.1f} M weights",
        flush=True)
  for m in (int(s) for s in args.shards.split(",")):
    mesh = mj.task_mesh(model=m)
    learner = mj.meta_learner(head.loss_fn, optax.adam(1e-5), algorithm="prompt_maml",
                              inner_steps=1, inner_lr=0.1, meta_batch_size=ps.META_BATCH,
                              sample=family.sample, task_repr=head.task_repr, mesh=mesh)
    state = learner.init(params, key=jax.random.key(1))
    with compile_timer() as compiled:
      exe = jax.jit(lambda s: learner.step(s)).lower(state).compile()
    mem = exe.memory_analysis()
    row = {"model_shards": m, "mesh": dict(mesh.shape), "compile_s": compiled["seconds"],
           "argument_bytes": int(mem.argument_size_in_bytes),
           "temp_bytes": int(mem.temp_size_in_bytes)}
    if args.steps:
      state, metrics = learner.step(state)
      jax.block_until_ready(metrics)
      times = []
      for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = learner.step(state)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
      row["step_s"] = statistics.median(times)
      row["loss"] = float(metrics["loss"])
    result["rows"].append(row)
    print(json.dumps(row), flush=True)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "model_axis.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(markdown(result))
  print(f"wrote {path}", file=sys.stderr)


def markdown(result) -> str:
  base = result["rows"][0]
  lines = [f"Device: {result['device']} x {result['devices']}, jax {result['jax']}.", "",
           "| model shards | mesh (tasks x model) | arguments per device | vs 1 shard "
           "| temporary per device | compile (s) | meta-steps/s |",
           "|---|---|---|---|---|---|---|"]
  for r in result["rows"]:
    speed = f"{1 / r['step_s']:.3f}" if r.get("step_s") else "-"
    lines.append(f"| {r['model_shards']} | {r['mesh']['tasks']} x {r['mesh'].get('model', 1)} "
                 f"| {r['argument_bytes'] / 2**20:,.0f} MiB "
                 f"| {r['argument_bytes'] / base['argument_bytes']:.2f} "
                 f"| {r['temp_bytes'] / 2**20:,.0f} MiB | {r['compile_s']:.1f} | {speed} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()

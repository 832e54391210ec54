"""What closing a jitted sampler over its data costs, against passing the data as arguments
(mtpjax._src.hoist): compile seconds and the process's peak memory, each mode in a fresh
process. The sampler draws 15-way 5-shot episodes of precomputed features, as the intents
experiment's do; the default table (rows x dim float32) is 221 MB.

  .venv/bin/python -m benchmarks.hoist_compile [--rows 57600] [--dim 960] [--batch 16]
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def one(mode: str, rows: int, dim: int, batch: int) -> dict:
  import jax
  import numpy as np

  import mtpjax as mj
  from mtpjax._src import hoist

  rng = np.random.default_rng(0)
  labels = np.arange(rows) % 150
  family = mj.tasks.text.episodes(np.zeros((rows, 1), np.int32), labels, ways=15, shots=5,
                                  queries=5,
                                  features={"h": rng.normal(size=(rows, dim)).astype(np.float32)})
  keys = jax.random.split(jax.random.key(0), batch)
  data, draw = hoist.hoist(family.sample)
  if mode == "closed":
    fn, args = jax.jit(lambda k: jax.vmap(family.sample)(k).query.x["h"].sum()), (keys,)
  else:
    fn, args = (jax.jit(lambda d, k: jax.vmap(lambda kk: draw(d, kk))(k).query.x["h"].sum()),
                (data, keys))
  jax.block_until_ready(args)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  seconds = time.perf_counter() - t
  value = float(compiled(*args))
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {"mode": mode, "table_mb": rows * dim * 4 / 1e6, "compile_seconds": seconds,
          "peak_rss_gb": peak / 1e6, "peak_rss_added_by_compile_gb": (peak - before) / 1e6,
          "value": value}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", type=int, default=57600)
  ap.add_argument("--dim", type=int, default=960)
  ap.add_argument("--batch", type=int, default=16, help="episodes drawn per call")
  ap.add_argument("--mode", choices=("closed", "argument"), help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.mode:
    print(json.dumps(one(args.mode, args.rows, args.dim, args.batch)))
    return
  results = []
  for mode in ("closed", "argument"):
    out = subprocess.run([sys.executable, "-m", "benchmarks.hoist_compile", f"--mode={mode}",
                          f"--rows={args.rows}", f"--dim={args.dim}", f"--batch={args.batch}"],
                         capture_output=True, text=True, check=True)
    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
  assert results[0]["value"] == results[1]["value"], "the two modes drew different episodes"
  print(f"table {results[0]['table_mb']:.0f} MB, {args.batch} episodes a call")
  print("| data | compile (s) | peak RSS (GB) | added while compiling (GB) |\n|---|---|---|---|")
  for r in results:
    print(f"| {r['mode']} | {r['compile_seconds']:.2f} | {r['peak_rss_gb']:.2f} | "
          f"{r['peak_rss_added_by_compile_gb']:.2f} |")


if __name__ == "__main__":
  main()

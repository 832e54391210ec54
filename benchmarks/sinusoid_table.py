"""Prints the README's sinusoid table from the results.json files of a runs directory.

  .venv/bin/python -m benchmarks.sinusoid_table [RUNS_DIR]      # default: runs
"""

import glob
import json
import os
import sys

# Meta-SGD paper, Table 1 (transcription, unconfirmed): MSE after 1 step, mean +- 95% CI.
PUBLISHED = {("maml", 5): "1.13 ± 0.18", ("maml", 10): "0.77 ± 0.11", ("maml", 20): "0.48 ± 0.08",
             ("metasgd", 5): "0.90 ± 0.16", ("metasgd", 10): "0.53 ± 0.09",
             ("metasgd", 20): "0.31 ± 0.05"}
ORDER = ["maml", "fomaml", "metasgd", "anil", "reptile", "cavia", "prompt_maml"]


def fmt(row):
  if row is None:
    return "-"
  s = f"{row['mean']:.3f} ± {row['ci95']:.3f}"
  if row.get("nonfinite"):
    s += f" ({row['nonfinite']} diverged)"
  return s


def main(runs="runs"):
  results = []
  for path in glob.glob(os.path.join(runs, "*", "results.json")):
    with open(path) as f:
      r = json.load(f)
    if r.get("benchmark") == "sinusoid":
      results.append(r)
  results.sort(key=lambda r: (r["config"]["shots"], ORDER.index(r["algorithm"])
                              if r["algorithm"] in ORDER else 99))
  print("| shots | algorithm | meta-steps | MSE, 0 steps | MSE, 1 step | MSE, 10 steps | "
        "published, 1 step | meta-steps/s |")
  print("|---|---|---|---|---|---|---|---|")
  for r in results:
    by_steps = {row["inner_steps"]: row for row in r["rows"]}
    shots = r["config"]["shots"]
    print(f"| {shots} | {r['algorithm']} | {r['num_steps']:,} | {fmt(by_steps.get(0))} | "
          f"{fmt(by_steps.get(1))} | {fmt(by_steps.get(10))} | "
          f"{PUBLISHED.get((r['algorithm'], shots), '-')} | {r['meta_steps_per_sec']:.0f} |")


if __name__ == "__main__":
  main(*sys.argv[1:])

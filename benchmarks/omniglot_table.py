"""Prints the README's Omniglot table from the results.json files of a runs directory.

  .venv/bin/python -m benchmarks.omniglot_table [RUNS_DIR]      # default: runs/omniglot_cpu

Accuracy (%) on 600 test episodes, mean ± 95% CI, at the protocol's test inner-step count
(3 for 5-way; ProtoNet has none) and after 1 step, beside the published figures.
"""

import glob
import json
import os
import sys

# ../shared/BENCHMARKS.md section 2 (transcriptions, unconfirmed unless noted there).
PUBLISHED = {
    "maml": {"5-way 1-shot": "98.7 ± 0.4", "5-way 5-shot": "99.9 ± 0.1",
             "20-way 1-shot": "95.8 ± 0.3", "20-way 5-shot": "98.9 ± 0.2"},
    "fomaml": {"5-way 1-shot": "98.3 ± 0.5", "5-way 5-shot": "99.2 ± 0.2",
               "20-way 1-shot": "89.4 ± 0.5", "20-way 5-shot": "97.9 ± 0.1"},
    "metasgd": {"5-way 1-shot": "99.53 ± 0.26", "5-way 5-shot": "99.93 ± 0.09",
                "20-way 1-shot": "95.93 ± 0.38", "20-way 5-shot": "98.97 ± 0.19"},
    "anil": {"20-way 1-shot": "96.2 ± 0.5", "20-way 5-shot": "98.0 ± 0.3"},
    "protonet": {"5-way 1-shot": "98.8", "5-way 5-shot": "99.7", "20-way 1-shot": "96.0",
                 "20-way 5-shot": "98.9"},
    "reptile": {"5-way 1-shot": "95.39 ± 0.09", "5-way 5-shot": "98.90 ± 0.10",
                "20-way 1-shot": "88.14 ± 0.15", "20-way 5-shot": "96.65 ± 0.33"},
}
ORDER = ["maml", "fomaml", "anil", "metasgd", "protonet", "cavia", "prompt_maml", "reptile"]
LABEL = {"cavia": "context prompt (CAVIA, FiLM)", "prompt_maml": "context prompt, meta-learned init"}


def cell(rows, setting, steps):
  for r in rows:
    if r["metric"] == "accuracy" and r["setting"] == setting and r["inner_steps"] == steps:
      s = f"{100 * r['mean']:.1f} ± {100 * r['ci95']:.1f}"
      return s + (f" ({r['nonfinite']} diverged)" if r.get("nonfinite") else "")
  return "-"


def main(runs="runs/omniglot_cpu"):
  results = []
  for path in glob.glob(os.path.join(runs, "*", "results.json")):
    with open(path) as f:
      r = json.load(f)
    if r.get("benchmark", "").startswith("omniglot"):
      results.append(r)
  results.sort(key=lambda r: (ORDER.index(r["algorithm"]) if r["algorithm"] in ORDER else 99,
                              bool(r["config"].get("zero_head"))))
  settings = []
  for r in results:
    for row in r["rows"]:
      if row["setting"] not in settings:
        settings.append(row["setting"])
  head = "| algorithm | meta-steps x tasks |"
  for s in settings:
    head += f" {s}, 1 step | {s}, test steps | published |"
  print(head + " meta-steps/s |")
  print("|---" * (3 * len(settings) + 3) + "|")
  for r in results:
    c = r["config"]
    test_steps = c.get("test_inner_steps") or 0
    label = LABEL.get(r["algorithm"], r["algorithm"])
    published = PUBLISHED.get(r["algorithm"], {})
    if c.get("zero_head"):  # a variant of the published algorithm, not the published set-up
      label, published = label + ", zero head (zeroing trick)", {}
    if c.get("norm", "group") != "group":
      label += f", norm={c['norm']}"
    line = f"| {label} | {r['num_steps']:,} x {c['meta_batch_size']} |"
    for s in settings:
      one = "-" if r["algorithm"] == "protonet" else cell(r["rows"], s, 1)
      line += (f" {one} | {cell(r['rows'], s, test_steps)} |"
               f" {published.get(s, '-')} |")
    print(line + f" {r['meta_steps_per_sec']:.2f} |")


if __name__ == "__main__":
  main(*sys.argv[1:])

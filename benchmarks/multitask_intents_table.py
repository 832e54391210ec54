"""The multi-task classification tables (CLINC150's domains, Omniglot's alphabets): per-task
test accuracy and macro-F1 of every method, Δm against the single-task models (both
conventions, accuracy and F1 as each task's two metrics), and, for CLINC150, the aggregation
and distillation stages.

  .venv/bin/python -m benchmarks.multitask_intents_table RUNS [--markdown FILE]
      [--benchmark multitask_intents|multitask_omniglot]
"""

import argparse
import collections
import glob
import json
import os

import numpy as np

import mtpjax as mj

HIGHER = {"accuracy": True, "f1": True}


def load(runs: str, benchmark: str = "multitask_intents") -> list:
  rows = []
  for path in sorted(glob.glob(os.path.join(runs, "*", "results.json"))):
    with open(path) as f:
      res = json.load(f)
    if res.get("benchmark") == benchmark:
      rows += [{**r, "steps_per_sec": res.get("meta_steps_per_sec")} for r in res["rows"]]
  return rows


def per_domain(rows, stage="multitask", split="test", **match):
  """{(method, seed): {domain: {"accuracy", "f1"}}} of one stage's rows."""
  out = collections.defaultdict(dict)
  for r in rows:
    if r["stage"] == stage and r["split"] == split and all(r.get(k) == v for k, v in match.items()):
      out[(r["method"], r["seed"])][r["domain"]] = {"accuracy": r["accuracy"], "f1": r["f1"]}
  return out


def stat(values):
  v = np.asarray(values, float)
  return (v.mean(), v.std(ddof=1) if v.size > 1 else float("nan"))


def fmt(ms, scale=1.0, digits=1):
  m, s = ms
  return f"{scale * m:.{digits}f}" + ("" if not np.isfinite(s) else f" ± {scale * s:.{digits}f}")


def markdown(rows) -> str:
  mt = per_domain(rows)
  methods = sorted({m for m, _ in mt}, key=lambda m: (m != "single_task", m))
  lines = ["| method | mean accuracy % | mean macro-F1 % | Δm % (LibMTL, + better) | "
           "Δm % (mean, - better) | worst domain accuracy % |", "|---|---|---|---|---|---|"]
  for m in methods:
    seeds = sorted(s for mm, s in mt if mm == m)
    acc = [np.mean([v["accuracy"] for v in mt[(m, s)].values()]) for s in seeds]
    f1 = [np.mean([v["f1"] for v in mt[(m, s)].values()]) for s in seeds]
    worst = [min(v["accuracy"] for v in mt[(m, s)].values()) for s in seeds]
    dl, dn = [], []
    for s in seeds:
      base = mt.get(("single_task", s))
      if base is not None and m != "single_task":
        d = mj.mtl.delta_m_both(mt[(m, s)], base, HIGHER)
        dl.append(d["libmtl"])
        dn.append(d["mean"])
    cell = lambda v, scale=1.0: fmt(stat(v), scale, 2 if scale == 1.0 else 1) if v else "-"
    lines.append(f"| {m} | {cell(acc, 100)} | {cell(f1, 100)} | {cell(dl)} | {cell(dn)} | "
                 f"{cell(worst, 100)} |")
  agg = collections.defaultdict(list)
  for r in rows:
    if r["stage"] == "aggregation":
      agg[(r["method"], r["init"])].append(r["accuracy"])
  if agg:
    lines += ["", "Aggregation: held-out domains' test accuracy % after training a head and a "
              "prompt from each initial prompt (mean over held-out domains and seeds)",
              "| trained with | " + " | ".join(sorted({i for _, i in agg})) + " |",
              "|---|" + "---|" * len({i for _, i in agg})]
    for m in sorted({m for m, _ in agg}):
      lines.append(f"| {m} | " + " | ".join(f"{100 * np.mean(agg[(m, i)]):.1f}" if agg.get((m, i))
                                          else "-" for i in sorted({i for _, i in agg})) + " |")
  dist = collections.defaultdict(list)
  for r in rows:
    if r["stage"] == "distillation":
      dist[(r["method"], r["student"])].append(r["accuracy"])
  if dist:
    lines += ["", "Distillation: a prompt-only student (one prompt for every domain, the "
              "teacher's heads frozen), mean test accuracy % over the domains",
              "| teacher | teacher | distilled student | hard-label student |", "|---|---|---|---|"]
    for m in sorted({m for m, _ in dist}):
      teacher = [v["accuracy"] for (mm, _), dom in mt.items() if mm == m for v in dom.values()]
      mean = lambda v: f"{100 * np.mean(v):.1f}"
      lines.append(f"| {m} | {mean(teacher)} | {mean(dist[(m, 'distilled')])} | "
                   f"{mean(dist[(m, 'hard_labels')])} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs")
  parser.add_argument("--markdown", default=None)
  parser.add_argument("--benchmark", default="multitask_intents",
                      choices=("multitask_intents", "multitask_omniglot"))
  args = parser.parse_args()
  rows = load(args.runs, args.benchmark)
  if not rows:
    raise SystemExit(f"no {args.benchmark} results.json under {args.runs}")
  text = markdown(rows)
  print(text)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()

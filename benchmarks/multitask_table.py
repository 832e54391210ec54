"""The multi-task synthetic table: per-task test MSE and Δm of every method against the
single-task models, per architecture and task correlation, mean +- std over seeds.

  .venv/bin/python -m benchmarks.multitask_table RUNS [--markdown FILE] [--split test]

Reads RUNS/*/results.json written by experiments.multitask. Δm is computed per seed against
that seed's single_task run of the same architecture and correlation, then averaged; both
conventions are printed: LibMTL's (positive = better) and the mean-over-metrics one of
Nash-MTL / CAGrad / FAMO (lower = better; with one metric per task it is minus LibMTL's).
Saves RUNS/delta_m.png (Δm against correlation, one line per method, a panel per arch) and
RUNS/task_mse.png (every method's per-task test MSE, a panel per arch and correlation).
"""

import argparse
import collections
import glob
import json
import os

import numpy as np

import mtpjax as mj

HIGHER = {"mse": False}


def load(runs: str, split: str) -> dict:
  """{(arch, correlation, method, seed): {task: mse}}."""
  out = {}
  for path in sorted(glob.glob(os.path.join(runs, "*", "results.json"))):
    with open(path) as f:
      res = json.load(f)
    if res.get("benchmark") != "multitask_synthetic":
      continue
    for r in res["rows"]:
      if r["split"] == split:
        key = (r["arch"], float(r["correlation"]), r["method"], int(r["seed"]))
        out.setdefault(key, {})[str(r["task"])] = {"mse": float(r["mse"])}
  return out


def summarise(table: dict) -> dict:
  """{(arch, corr, method): {"mse": [per task (mean, std)], "libmtl": (m, s), "mean": (m, s),
  "seeds": n}}, Δm only where the same seed's single_task run exists."""
  groups = collections.defaultdict(dict)
  for (arch, corr, method, seed), res in table.items():
    groups[(arch, corr, method)][seed] = res
  out = {}
  for (arch, corr, method), by_seed in groups.items():
    tasks = sorted(next(iter(by_seed.values())))
    mse = [[by_seed[s][t]["mse"] for s in by_seed] for t in tasks]
    deltas = {"libmtl": [], "mean": []}
    for seed, res in by_seed.items():
      base = table.get((arch, corr, "single_task", seed))
      if base is not None and method != "single_task":
        d = mj.mtl.delta_m_both(res, base, HIGHER)
        for c in deltas:
          deltas[c].append(d[c])
    stat = lambda v: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"))
    out[(arch, corr, method)] = {"mse": [stat(v) for v in mse], "seeds": len(by_seed),
                                 **{c: stat(v) if v else None for c, v in deltas.items()}}
  return out


def fmt(ms, digits=2):
  if ms is None:
    return "-"
  m, s = ms
  return f"{m:+.{digits}f}" if not np.isfinite(s) else f"{m:+.{digits}f} ± {s:.{digits}f}"


def markdown(summary: dict) -> str:
  archs = sorted({k[0] for k in summary})
  corrs = sorted({k[1] for k in summary})
  methods = sorted({k[2] for k in summary}, key=lambda m: (m != "single_task", m))
  lines = []
  for arch in archs:
    lines.append(f"\n**{arch}**: Δm % (LibMTL's convention, positive = better than the "
                 f"single-task models), then the test MSE of task 0 / task 1")
    lines.append("| method | " + " | ".join(f"p = {c:g}" for c in corrs) + " |")
    lines.append("|---|" + "---|" * len(corrs))
    for m in methods:
      cells = []
      for c in corrs:
        s = summary.get((arch, c, m))
        if s is None:
          cells.append("")
          continue
        mse = " / ".join(f"{a:.2f}" for a, _ in s["mse"])
        cells.append(f"{fmt(s['libmtl'])} ({mse})" if s["libmtl"] else f"({mse})")
      lines.append(f"| {m} | " + " | ".join(cells) + " |")
  seeds = sorted({s["seeds"] for s in summary.values()})
  lines.append(f"\nmean ± std over {'/'.join(map(str, seeds))} seed(s); the other convention "
               f"(Nash-MTL/CAGrad/FAMO's, lower = better) is minus these with one metric a task.")
  return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  archs = sorted({k[0] for k in summary})
  fig, axes = plt.subplots(1, len(archs), figsize=(6 * len(archs), 4.5), squeeze=False,
                           sharey=True)
  for ax, arch in zip(axes[0], archs):
    methods = sorted({k[2] for k in summary if k[0] == arch and summary[k]["libmtl"]})
    for m in methods:
      pts = sorted((c, summary[(a, c, mm)]["libmtl"]) for (a, c, mm) in summary
                   if a == arch and mm == m and summary[(a, c, mm)]["libmtl"])
      xs = [c for c, _ in pts]
      ys = np.array([v[0] for _, v in pts])
      es = np.nan_to_num(np.array([v[1] for _, v in pts]))
      ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, lw=1, capsize=2, label=m)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="task correlation p", title=arch)
  axes[0][0].set_ylabel("Δm % vs single-task (LibMTL, + = better)")
  axes[0][-1].legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_tasks(summary: dict, path: str) -> None:
  """Per-task test MSE of every method: a panel per (arch, correlation), two bars a method."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  archs = sorted({k[0] for k in summary})
  corrs = sorted({k[1] for k in summary})
  methods = sorted({k[2] for k in summary}, key=lambda m: (m != "single_task", m))
  fig, axes = plt.subplots(len(archs), len(corrs), figsize=(4.2 * len(corrs), 3.6 * len(archs)),
                           squeeze=False, sharey=True)
  x = np.arange(len(methods))
  for i, arch in enumerate(archs):
    for j, corr in enumerate(corrs):
      ax = axes[i][j]
      for t, off in ((0, -0.2), (1, 0.2)):
        vals = [summary.get((arch, corr, m), {"mse": [(np.nan, 0)] * 2})["mse"][t] for m in methods]
        ax.bar(x + off, [v[0] for v in vals], 0.4, yerr=np.nan_to_num([v[1] for v in vals]),
               label=f"task {t}")
      ax.set_xticks(x, methods, rotation=90, fontsize=7)
      ax.set_title(f"{arch}, p = {corr:g}", fontsize=9)
  axes[0][0].set_ylabel("test MSE")
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs")
  parser.add_argument("--markdown", default=None)
  parser.add_argument("--split", default="test", choices=("val", "test"))
  args = parser.parse_args()
  table = load(args.runs, args.split)
  if not table:
    raise SystemExit(f"no multitask results.json under {args.runs}")
  summary = summarise(table)
  text = markdown(summary)
  print(text)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(text + "\n")
  path = os.path.join(args.runs, "delta_m.png")
  plot(summary, path)
  tasks_path = os.path.join(args.runs, "task_mse.png")
  plot_tasks(summary, tasks_path)
  print(f"wrote {path}, {tasks_path}")


if __name__ == "__main__":
  main()

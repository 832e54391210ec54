"""The intent table from the results.json files of experiments/intents/main.py runs, and its plots.

  .venv/bin/python -m benchmarks.intents_table runs/intents [--data clinc150.jsonl] [--markdown FILE]

One row per run (method): test accuracy (%) +- 95% CI at the inner-step count that validation
chose for each setting, the parameters meta-trained and adapted per episode, and the training
time. Plots (saved beside the runs): accuracy against shots, against inner steps, and against
parameters.
"""

import argparse
import glob
import json
import os

ORDER = ("frozen_prototypes", "frozen_logreg", "prompt_tuning", "maml", "fomaml", "reptile",
         "metasgd", "prompt_pool", "generated", "generated_maml", "average", "multitask",
         "finetune", "episode_finetune")


def load(runs: str) -> list:
  """Every run's results, labelled by its workdir's name (a method, or a variant of one)."""
  out = []
  for path in sorted(glob.glob(os.path.join(runs, "*", "results.json"))):
    with open(path) as f:
      res = json.load(f)
    res["label"] = os.path.basename(os.path.dirname(path))
    out.append(res)
  rank = {m: i for i, m in enumerate(ORDER)}
  return sorted(out, key=lambda r: (rank.get(r["algorithm"], len(ORDER)), r["label"]))


def settings_of(results, data):
  seen = []
  for res in results:
    for r in res["rows"]:
      if r["data"] == data and r["split"] == "test" and r["setting"] not in seen:
        seen.append(r["setting"])
  return seen


def selected_row(res, data, setting):
  """The test row of a setting at the inner-step count validation chose, or None."""
  rows = [r for r in res["rows"] if r["data"] == data and r["split"] == "test"
          and r["setting"] == setting and r["selected"]]
  return rows[0] if rows else None


def cell(res, data, setting):
  r = selected_row(res, data, setting)
  if r is None:
    return "-"
  steps = f" ({r['inner_steps']})" if r["inner_steps"] else ""
  return f"{100 * r['mean']:.1f} +- {100 * r['ci95']:.1f}{steps}"


def training_minutes(res):
  """Meta-training (or supervised training) time: the timed steps at the measured speed plus
  compilation, which survives re-evaluating a finished run; 0 for rows with no training."""
  seconds = res.get("per_domain_training_seconds", 0.0)
  if res.get("num_steps") and res.get("meta_steps_per_sec"):
    seconds += res["num_steps"] / res["meta_steps_per_sec"] + res.get("compile_seconds", 0.0)
  return f"{seconds / 60:.1f}"


def table(results, data) -> str:
  settings = settings_of(results, data)
  lines = ["| method | " + " | ".join(settings) + " | meta-trained params | adapted params "
           "| training (min) | test episodes |",
           "|---" * (len(settings) + 5) + "|"]
  for res in results:
    if not any(r["data"] == data for r in res["rows"]):
      continue
    adapted = res.get("adapted_parameters", "-")
    if isinstance(adapted, dict):
      adapted = ", ".join(f"{v:,} ({k})" for k, v in adapted.items())
    elif isinstance(adapted, int):
      adapted = f"{adapted:,}"
    episodes = sorted({r["episodes"] for r in res["rows"] if r["data"] == data
                       and r["split"] == "test"})
    lines.append(f"| {res['label']} | " + " | ".join(cell(res, data, s) for s in settings)
                 + f" | {res.get('meta_trained_parameters', 0):,} | {adapted} | "
                 f"{training_minutes(res)} | {'/'.join(map(str, episodes))} |")
  return "\n".join(lines)


def paired(results, data, baseline="frozen_prototypes") -> str:
  """Each method's accuracy minus the baseline's on the same test episodes (the rows carry
  per-episode accuracies): mean difference +- 1.96 std / sqrt(n) of the paired differences,
  much tighter than comparing the two intervals. Episodes are the same only for the same
  number of them (episode i comes from split(key, n)[i]), so each row is paired with a
  baseline run of its own episode count (e.g. a frozen_prototypes run with eval_tasks=300)."""
  import numpy as np
  bases = [r for r in results if r["algorithm"] == baseline]
  if not bases:
    return ""
  settings = settings_of(results, data)

  def values(res, setting):
    r = selected_row(res, data, setting)
    return np.asarray(r["per_episode"]) if r is not None and "per_episode" in r else None

  lines = [f"| method - {baseline} on the same episodes (points) | " + " | ".join(settings)
           + " |", "|---" * (len(settings) + 1) + "|"]
  for res in results:
    if res["algorithm"] == baseline:
      continue
    cells = []
    for s in settings:
      a = values(res, s)
      same = [b for b in (values(r, s) for r in bases)
              if a is not None and b is not None and b.shape == a.shape]
      if not same:
        cells.append("-")
        continue
      d = 100 * (a - same[0])
      ci = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
      cells.append(f"{d.mean():+.1f} +- {ci:.1f}")
    if any(c != "-" for c in cells):
      lines.append(f"| {res['label']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) if len(lines) > 2 else ""


def plots(results, data, out_dir) -> list:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  paths = []
  selected = lambda res, setting: selected_row(res, data, setting)

  def save(fig, ax, name):
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, name))
    fig.savefig(paths[-1], dpi=110)

  # Accuracy against shots (5-way), every method, with intervals.
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for res in results:
    pts = []
    for s in settings_of(results, data):
      ways, shots = s.split("-way ")
      if ways == "5" and selected(res, s):
        r = selected(res, s)
        pts.append((int(shots.split("-")[0]), 100 * r["mean"], 100 * r["ci95"]))
    if pts:
      pts.sort()
      ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                  marker="o", capsize=3, label=res["label"])
  ax.set(xscale="log", xlabel="shots (5-way)", ylabel="test accuracy (%)",
         title=f"{data}: accuracy against shots (95% CI)")
  ax.set_xticks([1, 2, 5, 10], labels=["1", "2", "5", "10"])
  save(fig, ax, "intents_accuracy_vs_shots.png")
  plt.close(fig)

  # Accuracy against inner steps, for the runs that measured more than one count.
  fig, ax = plt.subplots(figsize=(7, 4.5))
  drawn = False
  for res in results:
    for s in settings_of(results, data)[:1]:
      rows = sorted((r for r in res["rows"] if r["data"] == data and r["split"] == "test"
                     and r["setting"] == s), key=lambda r: r["inner_steps"])
      if len(rows) > 1:
        drawn = True
        ax.errorbar([r["inner_steps"] for r in rows], [100 * r["mean"] for r in rows],
                    yerr=[100 * r["ci95"] for r in rows], marker="o", capsize=3,
                    label=f"{res['label']} ({s})")
  if drawn:
    ax.set(xlabel="inner steps per test episode", ylabel="test accuracy (%)",
           title=f"{data}: accuracy against inner steps")
    save(fig, ax, "intents_accuracy_vs_inner_steps.png")
  plt.close(fig)

  # Accuracy against parameters trained (meta-trained + adapted), first setting.
  fig, ax = plt.subplots(figsize=(7, 4.5))
  s = settings_of(results, data)[0]
  for res in results:
    r = selected(res, s)
    if r is None:
      continue
    adapted = res.get("adapted_parameters", 0)
    adapted = max(adapted.values()) if isinstance(adapted, dict) else adapted
    n = res.get("meta_trained_parameters", 0) + adapted
    ax.errorbar([max(n, 1)], [100 * r["mean"]], yerr=[100 * r["ci95"]], marker="o", capsize=3,
                label=res["label"])
  ax.set(xscale="log", xlabel="parameters trained (meta-trained + adapted per episode; 1 = none)",
         ylabel="test accuracy (%)", title=f"{data}, {s}: accuracy against parameters")
  save(fig, ax, "intents_accuracy_vs_parameters.png")
  plt.close(fig)
  return paths


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs")
  parser.add_argument("--markdown", help="also write the tables to this file")
  parser.add_argument("--no_plots", action="store_true")
  args = parser.parse_args()
  results = load(args.runs)
  if not results:
    raise SystemExit(f"no results.json under {args.runs}/*/")
  datas = []
  for res in results:
    for r in res["rows"]:
      if r["split"] == "test" and r["data"] not in datas:
        datas.append(r["data"])
  text = []
  for data in datas:
    text.append(f"**{data}** (test accuracy %, the inner-step count chosen on validation in "
                f"brackets when not 0)\n\n" + table(results, data))
    diff = paired(results, data)
    if diff:
      text.append(diff)
    if not args.no_plots:
      for p in plots(results, data, args.runs):
        text.append(f"plot: {p}")
  print("\n\n".join(text))
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write("\n\n".join(t for t in text if not t.startswith("plot:")) + "\n")


if __name__ == "__main__":
  main()

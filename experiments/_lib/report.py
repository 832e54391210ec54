"""What a run prints and records: table cells, the results table, eval rows."""

import math

import numpy as np

import mtpjax as mj


def format_value(v) -> str:
  """A table cell: 4 decimals in the usual range, scientific notation when huge or tiny, and
  nan / inf spelled out, so columns never run together."""
  if v is None:
    return "-"
  v = float(v)
  if not math.isfinite(v):
    return str(v)
  if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
    return f"{v:.3e}"
  return f"{v:.4f}"


def format_speed(v: float) -> str:
  """Steps per second with three significant figures (0.18, not 0)."""
  return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"


def results_table(results: dict) -> str:
  """The printed results: one line of facts, then a table of every row. Episodic rows get a
  `split` column wherever the rows carry one (validation rows choose, test rows report)."""
  speed = results["meta_steps_per_sec"]
  head = (f"{results['benchmark']} / {results['algorithm']}: {results['num_steps']} meta-steps, "
          + (f"{format_speed(speed)} meta-steps/s, " if speed else "")
          + f"{results['backend']}")
  rows = results["rows"]
  if rows and "metric" not in rows[0]:  # not episodic (multi-task): one column per field
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: format_value(v) if isinstance(v, float) else str(v)
    width = {c: max(len(c), *(len(cell(r.get(c, "-"))) for r in rows)) for c in cols}
    lines = [head, " ".join(f"{c:>{width[c]}}" for c in cols)]
    lines += [" ".join(f"{cell(r.get(c, '-')):>{width[c]}}" for c in cols) for r in rows]
    return "\n".join(lines)
  split = any("split" in r for r in rows)
  data = len({r.get("data") for r in rows}) > 1
  lines = [head,
           (f"{'split':<6} " if split else "") + (f"{'data':<16} " if data else "")
           + f"{'metric':<10} {'setting':<12} {'inner steps':>11} {'mean':>11} {'95% CI':>11} "
           f"{'episodes':>9} {'diverged':>9}"]
  for r in rows:
    lines.append((f"{r.get('split', '-'):<6} " if split else "")
                 + (f"{str(r.get('data', '-')):<16} " if data else "")
                 + f"{r['metric']:<10} {r['setting']:<12} {r['inner_steps']:>11} "
                 f"{format_value(r['mean']):>11} {format_value(r['ci95']):>11} "
                 f"{r['episodes']:>9} {r.get('nonfinite', 0):>9}")
  return "\n".join(lines)


def eval_rows(result: mj.EvalResult, *, metric_names: dict, setting: str) -> list[dict]:
  """results.json rows from an EvalResult: {metric, setting, inner_steps, mean, ci95, episodes}."""
  rows = []
  for name, label in metric_names.items():
    for steps, (mean, ci) in result.summary()[name].items():
      values = result.column(name, steps)
      rows.append({"metric": label, "setting": setting, "inner_steps": int(steps),
                   "mean": mean, "ci95": ci, "episodes": int(values.shape[0]),
                   # episodes whose adaptation diverged (their metric is inf/nan, and so is the
                   # mean): reported, never dropped.
                   "nonfinite": int(np.sum(~np.isfinite(values)))})
  return rows

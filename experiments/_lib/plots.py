"""The plots every experiment shares."""

import os
import warnings

import numpy as np


def save_figure(fig, workdir: str, name: str) -> str:
  """Saves a matplotlib figure as workdir/name (tight layout, 110 dpi), closes it, returns the path."""
  import matplotlib.pyplot as plt
  path = os.path.join(workdir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_training_curve(workdir: str, history: list, *, metric: str, title: str) -> list:
  """training_curve.png: query loss after adaptation (and support loss before it, when logged)
  against the meta-step, from the metrics.jsonl rows. Returns [path], or [] with no history."""
  if not history:
    return []
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  steps = [h["step"] for h in history]
  # A single logged point draws no line: show it as a marker and say why the curve is short.
  style = "o-" if len(history) < 2 else "-"
  if len(history) < 2:
    title += (f"\n(only {len(history)} logged point: config.log_every >= the steps run; lower "
              f"it for a curve)")
    warnings.warn("training_curve.png has a single point: config.log_every is at least the "
                  "number of meta-steps run; lower it for a curve")
  ax.plot(steps, [h["loss"] for h in history], style, label=f"query {metric} after adaptation")
  if "support_loss" in history[0]:
    ax.plot(steps, [h["support_loss"] for h in history], style, alpha=0.7,
            label=f"support {metric} before adaptation")
  ax.set(xlabel="meta-step", ylabel=f"{metric} (mean over log window)", yscale="log", title=title)
  ax.legend()
  return [save_figure(fig, workdir, "training_curve.png")]


def plot_task_curves(workdir: str, history: list, *, loss_label: str, title: str) -> list:
  """task_losses.png and weights.png: each task's training loss and balancing weight against
  the step, from a multi-task run's metrics.jsonl rows (vectors [T] per row)."""
  if not history or "task_losses" not in history[0]:
    return []
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  steps = [h["step"] for h in history]
  paths = []
  for key, label, name in (("task_losses", loss_label, "task_losses.png"),
                           ("weights", "task weight", "weights.png")):
    values = np.asarray([h[key] for h in history], np.float64)  # [logs, T]
    fig, ax = plt.subplots(figsize=(6, 4))
    style = "o-" if len(steps) < 2 else "-"
    for t in range(values.shape[1]):
      ax.plot(steps, values[:, t], style, label=f"task {t}")
    ax.set(xlabel="step", ylabel=label, title=title,
           yscale="log" if key == "task_losses" and np.all(values > 0) else "linear")
    if values.shape[1] <= 12:
      ax.legend(fontsize=7)
    paths.append(save_figure(fig, workdir, name))
  return paths

"""The plots every experiment shares."""

import os
import warnings


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

"""Guards: the config checks every experiment shares, and the NaN / divergence checks of the
loop, with messages that name the field to change."""

import math
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

import mtpjax as mj


class NonFiniteError(FloatingPointError):
  pass


class Interrupted(Exception):
  """Ctrl-C in the training loop: `step` reached, `checkpoint` the directory written then (or
  None when none could be written, e.g. mid-step with the state donated)."""

  def __init__(self, step: int, checkpoint: Optional[str]):
    super().__init__(f"interrupted at step {step}")
    self.step, self.checkpoint = step, checkpoint


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def check_integer_fields(config: ml_collections.ConfigDict,
                         defaults: ml_collections.ConfigDict) -> None:
  """Fields whose default is an integer, or a tuple of integers, must stay integers: a layer
  of 40.5 units would otherwise be built with 40 without a word."""
  for name, default in defaults.items():
    if name not in config:
      continue
    value = config[name]
    if _is_int(default) and not _is_int(value) and value is not None:
      raise ValueError(f"config.{name} must be an integer, got {value!r}")
    if (isinstance(default, (tuple, list)) and default and all(map(_is_int, default))
        and isinstance(value, (tuple, list)) and not all(map(_is_int, value))):
      raise ValueError(f"config.{name} must be a list of integers, got {tuple(value)!r}")


def check_config(config: ml_collections.ConfigDict, algorithms=None, *,
                 meta: bool = True) -> None:
  """Clear errors for the fields every experiment shares, before anything compiles.

  `algorithms`: the names this experiment accepts (default: mtpjax.ALGORITHMS).
  `meta`: False for experiments without an inner loop (multi-task training), which have no
  meta-batch, inner steps or evaluation tasks.
  """

  def positive(name, allow_zero=False):
    value = config[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
      raise ValueError(f"config.{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")

  algorithms = sorted(mj.ALGORITHMS if algorithms is None else algorithms)
  field = "algorithm" if meta else "method"  # multi-task runs name a balancing method
  if config[field] not in algorithms:
    raise ValueError(f"config.{field} must be one of {algorithms}, got {config[field]!r}")
  meta_fields = ("meta_batch_size", "inner_lr", "eval_tasks") if meta else ()
  for name in meta_fields + ("outer_lr", "log_every", "checkpoint_every", "keep_checkpoints"):
    positive(name)
  if meta:
    positive("inner_steps", allow_zero=True)
  positive("num_steps", allow_zero=True)  # 0: evaluate the initialisation (a baseline)
  k = config.get("steps_per_call", 1)
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"config.steps_per_call must be a positive int, got {k!r}")
  eval_steps = list(config.eval_inner_steps) if meta else [0]
  if not eval_steps or any((not isinstance(s, int)) or s < 0 for s in eval_steps):
    raise ValueError(f"config.eval_inner_steps must be a non-empty list of integers >= 0, "
                     f"got {eval_steps!r}")
  factor = config.get("divergence_factor", 0.0)
  if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (
      factor == 0 or factor > 1):
    raise ValueError(f"config.divergence_factor must be 0 (off) or > 1, got {factor!r}")
  if config.nan_policy not in ("stop", "skip"):
    raise ValueError(f"config.nan_policy must be 'stop' or 'skip', got {config.nan_policy!r}")


@jax.jit
def all_finite(tree):
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def parse_settings(settings, num_classes: Optional[int] = None) -> list:
  """["5x1", "5x5"] -> [(5, 1), (5, 5)] (ways x shots), with errors that name the field;
  num_classes, when given, bounds the ways."""
  out = []
  for s in settings:
    try:
      ways, shots = (int(v) for v in str(s).lower().split("x"))
    except ValueError:
      raise ValueError(f"config.eval_settings entries must be 'WAYSxSHOTS' like '5x1', got "
                       f"{s!r}") from None
    if ways <= 1 or shots <= 0 or (num_classes is not None and ways > num_classes):
      bound = f"2 <= ways <= {num_classes} (test classes)" if num_classes else "ways >= 2"
      raise ValueError(f"config.eval_settings: {s!r} needs {bound} and shots >= 1")
    out.append((ways, shots))
  if not out:
    raise ValueError("config.eval_settings must list at least one 'WAYSxSHOTS' setting")
  return out


def lr_cause(config) -> str:
  """The likely cause of a non-finite or diverging run, naming the config's learning rates."""
  if "inner_lr" not in config:
    return (f"Likely cause: the learning rate (config.outer_lr={config.outer_lr}) is too large "
            f"for this model; lower it")
  return (f"Likely causes: the inner learning rate (config.inner_lr={config.inner_lr}) or the "
          f"outer one (config.outer_lr={config.outer_lr}) is too large for this model; lower it")

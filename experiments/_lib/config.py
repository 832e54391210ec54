"""Config fields every meta-learning experiment shares."""

import math

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.algorithm = "maml"          # see mtpjax.ALGORITHMS
  c.seed = 0
  # None means "the protocol's value for this algorithm" (filled in by the experiment's
  # resolve(); config.json records the resolved value).
  c.num_steps = config_dict.placeholder(int)
  c.meta_batch_size = config_dict.placeholder(int)
  c.inner_steps = config_dict.placeholder(int)
  c.inner_lr = config_dict.placeholder(float)
  c.outer_lr = config_dict.placeholder(float)
  c.eval_tasks = 600
  c.eval_inner_steps = (0, 1, 10)
  c.log_every = 500
  c.checkpoint_every = 10_000
  c.keep_checkpoints = 3
  c.nan_policy = "stop"         # "stop": raise at the log step; "skip": skip non-finite updates
  c.nan_max_skips = 10          # with "skip": give up after this many non-finite updates in a row
  # Stop when the logged loss exceeds this many times its first logged value (a run that is
  # diverging but still finite, e.g. 2e6 against 3); 0 turns the check off.
  c.divergence_factor = 1000.0
  c.progress = True
  # Meta-steps per jitted call (learner.run: a lax.scan over steps). XLA then allocates its
  # temporaries once per call; on the CPU with glibc's malloc that saves most page faults
  # (Omniglot MAML, before Conv4 normalised after the pool: 1.33 -> 1.14 s per step at 4;
  # `python -m benchmarks.omniglot_speed --steps_per_call 4`), and the Python loop runs once
  # per call. A value set must divide log_every and checkpoint_every. None: the experiment's
  # fastest measured value, reduced to fit them (fit_steps_per_call).
  c.steps_per_call = config_dict.placeholder(int)
  # Flags appended to $XLA_FLAGS before JAX starts its backend (process-wide, so a config
  # field rather than a library argument; flags already in $XLA_FLAGS win). Changes speed and
  # float rounding, not the computation, so a resumed run may change it.
  c.xla_flags = ""
  return c


def fit_steps_per_call(config: ml_collections.ConfigDict,
                       fastest: int) -> ml_collections.ConfigDict:
  """steps_per_call left at None becomes `fastest` (the experiment's measured best), reduced
  to the largest value that divides log_every and checkpoint_every as well (their gcd), so
  logs and checkpoints fall between calls whatever the user sets them to."""
  if config.get("steps_per_call") is not None:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  every = [config[k] for k in ("log_every", "checkpoint_every")
           if isinstance(config.get(k), int) and config[k] > 0]
  config.steps_per_call = math.gcd(fastest, *every)
  return config


def fill(config: ml_collections.ConfigDict, defaults: dict) -> ml_collections.ConfigDict:
  """A copy of `config` with every None field taken from `defaults`."""
  config = ml_collections.ConfigDict(config.to_dict())
  for name, value in defaults.items():
    if config.get(name) is None:
      config[name] = value
  return config


# --- Multi-task experiments (no inner loop): experiments.multitask, multitask_omniglot,
# multitask_intents share these fields and checks.

META_FIELDS = ("meta_batch_size", "inner_steps", "inner_lr", "eval_tasks", "eval_inner_steps")


def multitask_methods() -> tuple:
  import mtpjax as mj
  return tuple(sorted(mj.mtl.METHODS)) + ("single_task",)


def multitask_config(method: str) -> ml_collections.ConfigDict:
  """base_config() without the meta-learning fields, plus the balancing method."""
  c = base_config()
  for name in META_FIELDS:  # no inner loop here
    del c[name]
  del c["algorithm"]            # no meta-learning algorithm: the method says what trains
  c.method = method             # a balancing method (mtpjax.mtl.METHODS) or single_task
  c.hyperparameters = ""        # the balancing method's, "name=value,..."
  return c


def parse_hyperparameters(text: str) -> dict:
  """"c=0.4,weights=1:2" -> {"c": 0.4, "weights": [1, 2]}; non-numbers stay strings."""
  out = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    if "=" not in item:
      raise ValueError(f"config.hyperparameters: expected name=value, got {item!r}")
    name, value = (s.strip() for s in item.split("=", 1))
    parts = value.split(":")
    try:
      nums = [float(v) if any(ch in v for ch in ".e") else int(v) for v in parts]
    except ValueError:
      out[name] = value  # a string option, e.g. mgda's normalization
      continue
    out[name] = nums if len(nums) > 1 else nums[0]
  return out


def check_at_least(config: ml_collections.ConfigDict, names, minimum: int) -> None:
  """A clear error for the first of `names` below `minimum`."""
  for name in names:
    if config[name] < minimum:
      raise ValueError(f"config.{name} must be >= {minimum}, got {config[name]}")


def resolve_multitask(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The method check every multi-task config shares; a resolved copy."""
  methods = multitask_methods()
  if config.method not in methods:
    raise ValueError(f"config.method must be one of {list(methods)}, got {config.method!r}")
  parse_hyperparameters(config.hyperparameters)  # errors now, not after loading data
  return ml_collections.ConfigDict(config.to_dict())

"""Config fields every meta-learning experiment shares."""

import ml_collections


def parse_arg(arg, **spec) -> ml_collections.ConfigDict:
  """get_config's argument, big_vision's habit: the few fields that choose other fields'
  defaults (an algorithm, the ways, a norm).

  `spec` names them with their defaults, the first being the one a bare value sets:
  parse_arg("cavia", algorithm="maml", ways=5) and parse_arg("algorithm=cavia") both give
  algorithm="cavia", ways=5; None or "" gives the defaults. A value takes its default's type.
  On the command line the experiment's CLI builds this string from --config.FIELD=VALUE of
  these fields, so every default a run sees is get_config's.
  """
  out = dict(spec)
  for i, item in enumerate(filter(None, (s.strip() for s in (arg or "").split(",")))):
    key, value = item.split("=", 1) if "=" in item else (None, item)
    if key is None:
      if i:
        raise ValueError(f"get_config({arg!r}): only the first item may omit its name")
      key = next(iter(spec))
    key = key.strip()
    if key not in spec:
      raise ValueError(f"get_config({arg!r}): unknown field {key!r}; its argument sets "
                       f"{', '.join(spec)}")
    kind = type(spec[key])
    try:
      out[key] = kind(value.strip())
    except ValueError:
      raise ValueError(f"config.{key} must be {kind.__name__}, got {value.strip()!r}") from None
  return ml_collections.ConfigDict(out)


def check_choice(field: str, value, choices) -> None:
  """A clear error for a value outside `choices` (of config.`field`)."""
  if value not in choices:
    raise ValueError(f"config.{field} must be one of {list(choices)}, got {value!r}")


def base_config(*, num_steps: int, meta_batch_size: int, inner_steps: int, inner_lr: float,
                outer_lr: float, steps_per_call: int = 1,
                algorithm: str = "maml") -> ml_collections.ConfigDict:
  """The fields every meta-learning experiment shares, with the protocol's values for the
  ones that depend on the algorithm (the caller's get_config knows them)."""
  c = ml_collections.ConfigDict()
  c.algorithm = algorithm       # see mtpjax.ALGORITHMS
  c.seed = 0
  c.num_steps = num_steps
  c.meta_batch_size = meta_batch_size
  c.inner_steps = inner_steps
  c.inner_lr = inner_lr
  c.outer_lr = outer_lr
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
  # At most this many meta-steps per jitted call (learner.run: a lax.scan over steps). XLA
  # then allocates its temporaries once per call; on the CPU with glibc's malloc that saves
  # most page faults (Omniglot MAML, before Conv4 normalised after the pool: 1.33 -> 1.14 s
  # per step at 4; `python -m benchmarks.omniglot_speed --steps_per_call 4`), and the Python
  # loop runs once per call. A call also ends at each log and checkpoint step, so any value
  # works with any log_every; one that divides both compiles a single call length.
  c.steps_per_call = steps_per_call
  # Flags appended to $XLA_FLAGS before JAX starts its backend (process-wide, so a config
  # field rather than a library argument; flags already in $XLA_FLAGS win). Changes speed and
  # float rounding, not the computation, so a resumed run may change it.
  c.xla_flags = ""
  return c


# --- Multi-task experiments (no inner loop): experiments.multitask, multitask_omniglot,
# multitask_intents share these fields and checks.

META_FIELDS = ("meta_batch_size", "inner_steps", "inner_lr", "eval_tasks", "eval_inner_steps")


def multitask_methods() -> tuple:
  import mtpjax as mj
  return tuple(sorted(mj.mtl.METHODS)) + ("single_task",)


def multitask_config(arg, *, num_steps: int, outer_lr: float,
                     steps_per_call: int) -> ml_collections.ConfigDict:
  """base_config() without the meta-learning fields, plus the balancing method, chosen by
  get_config's argument ("famo" or "method=famo"; default "equal")."""
  arg = parse_arg(arg, method="equal")
  check_choice("method", arg.method, multitask_methods())
  c = base_config(num_steps=num_steps, meta_batch_size=1, inner_steps=0, inner_lr=0.0,
                  outer_lr=outer_lr, steps_per_call=steps_per_call)
  for name in META_FIELDS:  # no inner loop here
    del c[name]
  del c["algorithm"]            # no meta-learning algorithm: the method says what trains
  c.method = arg.method         # a balancing method (mtpjax.mtl.METHODS) or single_task
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


def check_multitask(config: ml_collections.ConfigDict) -> None:
  """The checks every multi-task config shares."""
  check_choice("method", config.method, multitask_methods())
  parse_hyperparameters(config.hyperparameters)  # errors now, not after loading data


def configured(config_lib, **fields) -> ml_collections.ConfigDict:
  """config_lib.get_config with `fields` set, as the command line sets them: those named in
  config_lib.ARG (an algorithm, the ways, ...) go into get_config's argument and choose the
  protocol's defaults; the others then override."""
  arg = ",".join(f"{k}={fields.pop(k)}" for k in list(fields) if k in config_lib.ARG)
  c = config_lib.get_config(arg)
  c.update(fields)
  getattr(config_lib, "check", lambda config: None)(c)
  return c

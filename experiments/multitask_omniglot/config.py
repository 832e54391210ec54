"""Multi-task image classification: Omniglot's alphabets as tasks, a shared Conv4, per-alphabet
heads and FiLM prompts, any balancing method.

  .venv/bin/python -m experiments.multitask_omniglot --workdir runs/mtl_omniglot/famo --config.method=famo
  bash benchmarks/multitask_omniglot.sh runs/mtl_omniglot     # every method, then the table

Protocol: the first config.num_alphabets alphabets of Omniglot's background set in name order
(config.alphabets names others); each is one task: classify its characters (14 to 55). Each
character's 20 drawings are split by index: 0-11 train, 12-15 validation, 16-19 test. The
shared network is Conv4 (GroupNorm, config.filters filters); each alphabet has a linear head
over as many outputs as the largest alphabet has characters (the others' extra outputs are
masked out of the softmax) and, with config.prompt_dim > 0, a context vector that modulates
Conv4's last block by FiLM. Adam at config.outer_lr on config.batch_size drawings per alphabet
per step, config.num_steps steps. Reported per alphabet: test accuracy and macro-F1; Δm
against config.method=single_task (one Conv4, head and prompt per alphabet, side by side).
"""

import ml_collections

from experiments._lib import config as common

METHODS = common.multitask_methods()
SPLIT = {"train": (0, 12), "val": (12, 16), "test": (16, 20)}  # drawing indices per character


ARG = dict(method="equal")  # the fields get_config's argument sets ("famo" or "method=famo")


def get_config(arg=None) -> ml_collections.ConfigDict:
  c = common.multitask_config(arg, num_steps=1500, outer_lr=1e-3, steps_per_call=50)
  c.data = ""                       # "" = ../shared/data/omniglot28.npz
  c.num_alphabets = 10
  c.alphabets = ()                  # names; overrides num_alphabets when given
  c.filters = 32
  c.prompt_dim = 8
  c.batch_size = 16
  c.log_every = 100
  c.checkpoint_every = 500
  return c


def check(config) -> None:
  """Clear errors for this experiment's fields, before any data is read."""
  common.check_multitask(config)
  common.check_at_least(config, ("num_alphabets", "filters", "batch_size"), 1)
  if config.prompt_dim < 0:
    raise ValueError(f"config.prompt_dim must be >= 0, got {config.prompt_dim}")

"""Multi-task intent classification with prompts: CLINC150's domains as tasks on a frozen encoder.

  .venv/bin/python -m experiments.multitask_intents --workdir runs/mtl_intents/famo --config.method=famo
  .venv/bin/python -m experiments.multitask_intents --workdir runs/mtl_intents/single --config.method=single_task
  bash benchmarks/multitask_intents.sh runs/mtl_intents       # every method, then the table

Protocol: each of CLINC150's domains but the held-out ones (config.heldout_domains) is one
task: classify its 15 intents. The frozen all-MiniLM-L6-v2 encoder (mean pooling, L2
normalised) reads a prompt at config.entry_layer (the layers below it are computed once per
utterance); each domain has a linear head over the 384-d embedding and a prompt composed of a
shared part (role "prompt_shared") plus its own part (role "prompt", zero at the start).
Training data: the first config.train_per_intent utterances of each intent in CLINC150's train
split; validation: its val split (20 a intent); test: its test split (30 a intent). Adam at
config.outer_lr on config.batch_size utterances per domain per step, config.num_steps steps.
Reported per domain: test accuracy and macro-F1; Δm against config.method=single_task (every
domain with its own prompt, shared part included, and head, trained side by side).

After training, two more measurements on the same run (rows with "stage"):
  - aggregation: the trained domains' full prompts (shared + own) merged by mean,
    validation-accuracy-weighted mean, and the MPT decomposition's shared prompt; each is the
    initial prompt of each held-out domain, whose head and prompt are then trained for
    config.transfer_steps steps on config.transfer_per_intent utterances an intent, and tested;
    against the shared part alone and a zero prompt.
  - distillation: the multi-task model as teacher, a prompt-only student (one prompt for every
    domain, the teacher's heads frozen), trained for config.distill_steps steps with
    T = config.temperature and alpha = config.alpha, against the same student trained on the
    hard labels alone (alpha = 0).
"""

import ml_collections

from experiments._lib import config as common

METHODS = common.multitask_methods()
CLINC_DOMAINS = ("auto_and_commute", "banking", "credit_cards", "home", "kitchen_and_dining",
                 "meta", "small_talk", "travel", "utility", "work")


ARG = dict(method="equal")  # the fields get_config's argument sets ("famo" or "method=famo")


def get_config(arg=None) -> ml_collections.ConfigDict:
  c = common.multitask_config(arg, num_steps=300, outer_lr=1e-2, steps_per_call=50)
  c.data = ""                       # "" = ../shared/data/clinc150.jsonl
  c.encoder = ""                    # "" = ../shared/data/all-MiniLM-L6-v2
  c.heldout_domains = ("banking", "credit_cards")
  c.train_per_intent = 20
  c.max_len = 16                    # tokens; CLINC150 utterances average 8 words
  c.entry_layer = 5                 # the prompt enters the last of the 6 layers
  c.prompt_length = 4
  c.batch_size = 8                  # utterances per domain per step
  c.eval_batch_size = 256
  c.transfer_per_intent = 5
  c.transfer_steps = 100
  c.distill_steps = 300
  c.temperature = 2.0
  c.alpha = 0.5
  c.log_every = 50
  c.checkpoint_every = 300
  return c


def check(config) -> None:
  """Clear errors for this experiment's fields, before any data is read."""
  common.check_multitask(config)
  common.check_at_least(config, ("train_per_intent", "max_len", "prompt_length", "batch_size",
                                 "transfer_per_intent", "eval_batch_size"), 1)
  common.check_at_least(config, ("transfer_steps", "distill_steps"), 0)  # 0 skips a stage
  if not config.temperature > 0 or not 0 <= config.alpha <= 1:
    raise ValueError(f"config.temperature must be > 0 and config.alpha in [0, 1], got "
                     f"{config.temperature}, {config.alpha}")

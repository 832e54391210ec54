"""Omniglot few-shot classification, the protocol of Finn et al. 2017 (cbfinn/maml).

  .venv/bin/python -m experiments.omniglot --workdir runs/omniglot_maml
  .venv/bin/python -m experiments.omniglot --workdir runs/omniglot_proto --config.algorithm=protonet
  .venv/bin/python -m experiments.omniglot --workdir runs/omniglot_20way --config.ways=20

Protocol defaults (config.algorithm, ways and norm choose the others: get_config's argument):
  MAML split: 1200 meta-training characters and 423 test characters (shuffled by
  config.split_seed), each rotated by 0/90/180/270 degrees into 4 classes; 28x28 images.
  Conv4 (64 filters, GroupNorm with 32 groups: statistics per example, nothing leaks across
  tasks or examples; MAML used transductive batch norm, which config.norm can select) and a
  linear head. 60,000 meta-steps of Adam 1e-3.
  5-way: meta-batch 32, inner lr 0.4, 1 inner step in training, 3 in testing.
  20-way: meta-batch 16, inner lr 0.1, 5 inner steps in training and testing.
  Training episodes carry K query images per class (MAML's protocol); test episodes 15.
  Evaluation: 600 test episodes per setting in config.eval_settings, mean +- 95% CI.
Algorithms: every row of mtpjax.ALGORITHMS, plus "protonet" (prototypes on the Conv4
features, no inner loop). "cavia" / "prompt_maml" is the context-prompt variant: a
`context_dim` vector applied as FiLM after conv layer `context_layer`, the only thing adapted
(cavia: inner lr 3.0, 2 inner steps in training).
"""

from ml_collections import config_dict

from experiments._lib import config as common

ALGORITHMS = ("maml", "fomaml", "metasgd", "anil", "cavia", "prompt_maml", "reptile", "protonet")

WAYS_DEFAULTS = {  # cbfinn/maml's Omniglot settings
    5: dict(meta_batch_size=32, inner_lr=0.4, inner_steps=1, eval_inner_steps=(0, 1, 3)),
    20: dict(meta_batch_size=16, inner_lr=0.1, inner_steps=5, eval_inner_steps=(0, 1, 5)),
}
ALGORITHM_DEFAULTS = {
    # The context prompt restarts from zero for every task; a larger step suits it, and 2
    # inner steps in training (CAVIA's classification set-up). On the shortened CPU protocol,
    # 5-way 1-shot: 57.7% with 1 step at lr 1.0 (CAVIA's lr), 70.1% with 2, and 76.9 / 79.5%
    # (seeds 0 / 1) with 2 steps at lr 3.0.
    "cavia": dict(inner_lr=3.0, context_dim=100, inner_steps=2),
    "prompt_maml": dict(inner_lr=1.0, context_dim=100),
    "reptile": dict(inner_steps=5, inner_lr=0.1),
    "protonet": dict(inner_steps=0, eval_inner_steps=(0,)),
}


# XLA:CPU also hands elementwise fusions to YNNPACK. With batch norm, XLA otherwise fuses the
# statistics' backward into transposing copies that run ~10x slower than the same work
# untransposed: MAML's meta-step 0.79-0.84 -> 0.64-0.65 s (5-way 1-shot, 32 tasks). With
# GroupNorm it is ~10% slower (0.58 -> 0.65 s), so it is not set for other norms.
# benchmarks/omniglot_speed_notes.md has the measurements. CPU-only; other backends ignore it.
BATCH_NORM_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=+eltwise"


def default_xla_flags(norm: str) -> str:
  """The XLA flags this protocol uses with `norm` (also the speed benchmark's default)."""
  return BATCH_NORM_XLA_FLAGS if norm == "batch_transductive" else ""


# The fields get_config's argument sets ("cavia", or "algorithm=cavia,ways=20,norm=layer"):
# the defaults of others depend on them.
ARG = dict(algorithm="maml", ways=5, norm="group")


def get_config(arg=None):
  arg = common.parse_arg(arg, **ARG)
  common.check_choice("algorithm", arg.algorithm, ALGORITHMS)
  # Other ways are allowed, with the 5-way defaults.
  protocol = dict(WAYS_DEFAULTS.get(arg.ways, WAYS_DEFAULTS[5]), context_dim=0)
  protocol.update(ALGORITHM_DEFAULTS.get(arg.algorithm, {}))
  # 4 meta-steps per jitted call: 0.95x -> 1.04x learn2learn's step for the script;
  # benchmarks/omniglot_speed.py --steps_per_call 4 for the step alone.
  c = common.base_config(algorithm=arg.algorithm, num_steps=60_000,
                         meta_batch_size=protocol["meta_batch_size"],
                         inner_steps=protocol["inner_steps"], inner_lr=protocol["inner_lr"],
                         outer_lr=1e-3, steps_per_call=4)
  c.ways = arg.ways
  c.shots = 1                    # K: support images per class in training episodes
  c.train_queries = c.get_ref("shots") * 1  # query images per class in training: K
  c.eval_queries = 15            # query images per class in test episodes
  c.eval_settings = (f"{arg.ways}x1", f"{arg.ways}x5")  # WAYSxSHOTS of the test episodes
  c.eval_inner_steps = protocol["eval_inner_steps"]
  c.filters = 64
  c.norm = arg.norm              # group | layer | none | batch_transductive
  c.norm_groups = 32             # GroupNorm groups (filters must divide by it)
  c.conv_impl = "auto"           # see mtpjax conv3x3: im2col on CPUs and GPUs, XLA's conv on TPUs
  c.xla_flags = default_xla_flags(arg.norm)  # "" for none
  c.context_dim = protocol["context_dim"]  # FiLM context (prompt) size: per algorithm
  c.context_layer = 3            # FiLM after this conv layer (3 = the last; at 0 it stayed at chance)
  # The "zeroing trick" (Kao et al. 2022): the head starts every task at zero and is not
  # meta-learned (Algorithm.reset); without it first-order MAML's head drifts on this protocol.
  c.zero_head = False
  c.data_path = config_dict.placeholder(str)      # omniglot28.npz; None: $MTPJAX_DATA_DIR or ../shared/data
  c.split_seed = 1
  c.num_train_characters = 1200
  c.log_every = 100
  c.checkpoint_every = 2_000
  c.eval_batch_size = 50         # test episodes per vmapped evaluation chunk
  return c

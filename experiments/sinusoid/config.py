"""Sinusoid regression, the protocol of Finn et al. 2017 (MAML) and Zintgraf et al. 2019 (CAVIA).

  .venv/bin/python -m experiments.sinusoid --workdir runs/sinusoid_maml
  .venv/bin/python -m experiments.sinusoid --workdir runs/sinusoid_cavia --config.algorithm=cavia

Defaults (per algorithm, get_config's argument; --config.algorithm on the command line):
  MLP 1-40-40-1 ReLU, meta-batch 25, Adam 1e-3, K support and K query points per training
  task, 1 inner SGD step at lr 0.01, 70,000 meta-steps; evaluation on 600 fresh tasks with
  100 query points, MSE after 0, 1 and 10 inner steps.
  CAVIA / prompt_maml: 5 context parameters concatenated to the input, only they adapt,
  inner lr 1.0, 50,000 meta-steps (CAVIA's protocol).
  Reptile: 5 inner steps at lr 0.02 on the support set (1 step would make it joint training).

Expected (10-shot, 1 CPU run each; see README): MAML ~0.4 MSE after 1 step, ~0.1 after 10;
the published MAML figure is 0.77 +- 0.11 after 1 step.
"""

from experiments._lib import config as common

ALGORITHM_DEFAULTS = {
    "maml": dict(inner_lr=0.01, inner_steps=1, num_steps=70_000, context_dim=0),
    "fomaml": dict(inner_lr=0.01, inner_steps=1, num_steps=70_000, context_dim=0),
    "metasgd": dict(inner_lr=0.01, inner_steps=1, num_steps=70_000, context_dim=0),
    "anil": dict(inner_lr=0.01, inner_steps=1, num_steps=70_000, context_dim=0),
    "cavia": dict(inner_lr=1.0, inner_steps=1, num_steps=50_000, context_dim=5),
    "prompt_maml": dict(inner_lr=1.0, inner_steps=1, num_steps=50_000, context_dim=5),
    "reptile": dict(inner_lr=0.02, inner_steps=5, num_steps=70_000, context_dim=0),
}


ARG = dict(algorithm="maml")  # the fields get_config's argument sets ("cavia" or "algorithm=cavia")


def get_config(arg=None):
  arg = common.parse_arg(arg, **ARG)
  common.check_choice("algorithm", arg.algorithm, ALGORITHM_DEFAULTS)
  protocol = ALGORITHM_DEFAULTS[arg.algorithm]
  # 100 meta-steps per jitted call: the script with its defaults then trains at the speed of
  # a minimal hand-written jitted step (docs: performance; benchmarks/sinusoid_speed.py).
  c = common.base_config(algorithm=arg.algorithm, num_steps=protocol["num_steps"],
                         meta_batch_size=25, inner_steps=protocol["inner_steps"],
                         inner_lr=protocol["inner_lr"], outer_lr=1e-3, steps_per_call=100)
  c.shots = 10                  # K support points per task (5, 10 or 20 in the papers)
  c.train_queries = c.get_ref("shots") * 1  # query points per training task: K (the protocol)
  c.eval_queries = 100
  c.hidden = (40, 40)
  # "maml": truncated normal std 0.01, as cbfinn/maml. With "lecun" (Flax default) MAML reaches a
  # sharper init: 7 of 600 test tasks diverge at 10 inner steps (docs/results/sinusoid.md).
  c.kernel_init = "maml"
  c.context_dim = protocol["context_dim"]  # prompt (context) size: 5 for CAVIA, else none
  c.context_mode = "concat"     # concat | add | film
  c.plot_tasks = 4
  return c

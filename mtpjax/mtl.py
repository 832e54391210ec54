"""Multi-task learning: balancing methods (LibMTL's, in JAX), the multi-task step, multi-task
architectures, per-task metrics and Δm, aggregation of per-task prompts, and distillation.

>>> import mtpjax as mj                                                  # doctest: +SKIP
>>> bal = mj.mtl.get("cagrad", c=0.4)                                    # doctest: +SKIP
>>> state = bal.init(num_tasks=3)                                        # doctest: +SKIP
>>> grads, state, info = bal.update(task_losses, task_grads, state)      # doctest: +SKIP
"""

from mtpjax._src.aggregate import MPT, mpt_decompose, weighted_mean
from mtpjax._src.aggregate import mean as aggregate_mean
from mtpjax._src.distill import distillation_loss, soft_kl
from mtpjax._src.metrics import (CONVENTIONS, classification_metrics, confusion_matrix, delta_m,
                                 delta_m_both)
from mtpjax._src.mtl import (METHODS, Balancer, aligned_mtl, cagrad, dwa, equal, famo, fixed,
                             get, gradnorm, gradvac, imtl, mgda, nash_mtl, pcgrad, rlw,
                             uncertainty)
from mtpjax._src.mtl_toy import STARTS as TOY_STARTS
from mtpjax._src.mtl_toy import on_pareto_set, pareto_x2, toy_losses, toy_trajectories
from mtpjax._src.mtl_nets import MMoE, mmoe, shared_bottom, tower
from mtpjax._src.multitask import MultiTaskState, MultiTaskTrainer, multitask_trainer

__all__ = ["CONVENTIONS", "METHODS", "MPT", "Balancer", "MMoE", "aggregate_mean", "mpt_decompose",
           "weighted_mean", "MultiTaskState", "MultiTaskTrainer",
           "aligned_mtl", "cagrad", "classification_metrics", "confusion_matrix", "delta_m",
           "delta_m_both", "distillation_loss", "dwa", "equal", "famo", "fixed", "get",
           "gradnorm", "gradvac", "imtl", "mgda", "mmoe", "multitask_trainer", "nash_mtl",
           "on_pareto_set", "pareto_x2", "pcgrad", "rlw", "shared_bottom", "soft_kl", "TOY_STARTS",
           "toy_losses", "toy_trajectories", "tower", "uncertainty"]

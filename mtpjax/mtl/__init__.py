"""Multi-task learning: balancing methods (LibMTL's, in JAX), the multi-task step (on the
trainer core), per-task metrics and Δm, and distillation. Multi-task architectures live in
mtpjax.nn, prompt aggregation in mtpjax.prompts (both re-exported here).

>>> import jax.numpy as jnp
>>> import mtpjax as mj
>>> bal = mj.mtl.get("equal")
>>> grads, state, info = bal.update(jnp.array([1.0, 2.0]), jnp.array([[1.0], [3.0]]),
...                                 bal.init(2))
>>> grads
Array([4.], dtype=float32)
"""

from mtpjax._src.deprecation import module_getattr
from mtpjax.mtl._balancers import (METHODS, Balancer, aligned_mtl, cagrad, dwa, equal, famo,
                                   fixed, get, gradnorm, gradvac, imtl, mgda, nash_mtl, pcgrad,
                                   rlw, uncertainty)
from mtpjax.mtl._distill import distillation_loss, soft_kl
from mtpjax.mtl._metrics import (CONVENTIONS, classification_metrics, confusion_matrix, delta_m,
                                 delta_m_both)
from mtpjax.mtl._trainer import MultiTaskTrainer, multitask_trainer
from mtpjax.nn._multitask import MMoE, mmoe, shared_bottom, tower
from mtpjax.prompts._aggregate import MPT, mpt_decompose, weighted_mean
from mtpjax.prompts._aggregate import mean as aggregate_mean

__all__ = ["CONVENTIONS", "METHODS", "MPT", "Balancer", "MMoE", "MultiTaskTrainer",
           "aggregate_mean", "aligned_mtl", "cagrad", "classification_metrics",
           "confusion_matrix", "delta_m", "delta_m_both", "distillation_loss", "dwa", "equal",
           "famo", "fixed", "get", "gradnorm", "gradvac", "imtl", "mgda", "mmoe",
           "mpt_decompose", "multitask_trainer", "nash_mtl", "pcgrad", "rlw", "shared_bottom",
           "soft_kl", "tower", "uncertainty", "weighted_mean"]

__getattr__ = module_getattr("mtpjax.mtl", {
    "MultiTaskState": ("mtpjax", "TrainState"),
    "TOY_STARTS": ("mtpjax.tasks.toy", "STARTS"),
    "toy_losses": ("mtpjax.tasks.toy", "toy_losses"),
    "pareto_x2": ("mtpjax.tasks.toy", "pareto_x2"),
    "on_pareto_set": ("mtpjax.tasks.toy", "on_pareto_set"),
    "toy_trajectories": ("benchmarks.mtl_toy", "toy_trajectories"),
})

"""Gradient-based meta-learning: algorithms as choices over roles (ALGORITHMS), the inner loop
(`adapt`, a lax.scan), `meta_learner` (the meta-gradient, on the trainer core), evaluation
with confidence intervals, and ProtoNet.

>>> from mtpjax import meta
>>> algo = meta.get_algorithm("maml", fast=("prompt", "head"))
>>> algo.fast, algo.first_order
(('prompt', 'head'), False)
"""

from mtpjax.meta._adapt import REMAT_POLICIES, adapt, check_roles, remat_policy, split_roles
from mtpjax.meta._algorithms import (ALGORITHMS, Algorithm, fast_roles, get_algorithm,
                                     outer_roles)
from mtpjax.meta._evaluate import EvalResult, evaluate, make_evaluator, mean_ci95
from mtpjax.meta._learner import MetaLearner, meta_learner
from mtpjax.meta._protonet import ProtoNet, protonet

__all__ = ["ALGORITHMS", "Algorithm", "EvalResult", "MetaLearner", "ProtoNet", "REMAT_POLICIES",
           "adapt", "check_roles", "evaluate", "fast_roles", "get_algorithm", "make_evaluator",
           "mean_ci95", "meta_learner", "outer_roles", "protonet", "remat_policy",
           "split_roles"]

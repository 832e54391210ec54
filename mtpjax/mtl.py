"""Multi-task balancing methods (LibMTL's, in JAX): mtpjax.mtl.get(name, **hyperparameters).

>>> import mtpjax as mj                                                  # doctest: +SKIP
>>> bal = mj.mtl.get("cagrad", c=0.4)                                    # doctest: +SKIP
>>> state = bal.init(num_tasks=3)                                        # doctest: +SKIP
>>> grads, state, info = bal.update(task_losses, task_grads, state)      # doctest: +SKIP
"""

from mtpjax._src.multitask import MultiTaskState, MultiTaskTrainer, multitask_trainer
from mtpjax._src.mtl import (METHODS, Balancer, aligned_mtl, cagrad, dwa, equal, famo, fixed,
                             get, gradnorm, gradvac, imtl, mgda, nash_mtl, pcgrad, rlw,
                             uncertainty)

__all__ = ["METHODS", "Balancer", "MultiTaskState", "MultiTaskTrainer", "multitask_trainer", "aligned_mtl", "cagrad", "dwa", "equal", "famo", "fixed", "get",
           "gradnorm", "gradvac", "imtl", "mgda", "nash_mtl", "pcgrad", "rlw", "uncertainty"]

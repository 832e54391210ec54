"""mtpjax: meta-learned prompts in JAX.

Parameters are one role-keyed pytree ({"shared", "head", "prompt", "inner_lr"}); models are
(init, apply) pairs of pure functions; the inner loop is a lax.scan; the outer loop is one
jitted, donated step vmapped over the tasks of a meta-batch.

The subpackages hold one subject each: `nn` (networks and heads), `prompts` (prompt kinds,
initialisations, aggregation), `meta` (algorithms, adaptation, the meta-learner, evaluation),
`mtl` (balancers, the multi-task step, metrics, distillation), `pretrained` (checkpoint
loaders and encoders), `tasks` (task families and problems). The names used most are
re-exported here.

>>> import jax, jax.numpy as jnp
>>> import mtpjax as mj
>>> model = mj.compose(mj.mlp((8,)), mj.linear_head(1))
>>> params = model.init(jax.random.key(0), jnp.zeros((5, 1)))
>>> sorted(params)
['head', 'shared']
"""

from mtpjax import meta, mtl, nn, pretrained, prompts, tasks
from mtpjax._src.checkpoint import (Checkpointer, CheckpointError, StructureMismatch,
                                    restore_params)
from mtpjax._src.data import split_episode
from mtpjax._src.deprecation import module_getattr
from mtpjax._src.losses import accuracy, cross_entropy, mse, supervised, weighted_cross_entropy
from mtpjax._src.precision import mixed_precision
from mtpjax._src.sharding import check_mesh, local_copy, param_spec, place, task_mesh
from mtpjax._src.trainer import TrainState, compile_step
from mtpjax._src.types import (HEAD, INNER_LR, PROMPT, PROMPT_SHARED, ROLES, SHARED, Array,
                               Batch, Episode, LossFn, Params, PRNGKey, SampleFn)
from mtpjax._src.validate import check_finite
from mtpjax.meta import (ALGORITHMS, Algorithm, EvalResult, MetaLearner, ProtoNet, adapt,
                         evaluate, get_algorithm, make_evaluator, mean_ci95, meta_learner,
                         protonet, split_roles)
from mtpjax.nn import (FewShotHead, Model, Net, class_means, compose, conv4, identity,
                       linear_head, mlp, proto_maml, prototype_classifier, prototype_logits,
                       token_embeddings, transformer)

context_prompt = prompts.context  # a context vector (CAVIA) as a prompt

__all__ = ["ALGORITHMS", "Algorithm", "Array", "Batch", "CheckpointError", "Checkpointer",
           "Episode", "EvalResult", "FewShotHead", "HEAD", "INNER_LR", "LossFn", "MetaLearner",
           "Model", "Net", "PRNGKey", "PROMPT", "PROMPT_SHARED", "Params", "ProtoNet", "ROLES",
           "SHARED", "SampleFn", "StructureMismatch", "TrainState", "accuracy", "local_copy",
           "place", "adapt", "check_finite",
           "check_mesh", "class_means", "compile_step", "compose", "context_prompt", "conv4",
           "cross_entropy", "evaluate", "get_algorithm", "identity", "linear_head",
           "make_evaluator", "mean_ci95", "meta", "meta_learner", "mixed_precision", "mlp",
           "mse", "mtl", "nn", "param_spec", "pretrained", "prompts", "proto_maml", "protonet",
           "prototype_classifier", "prototype_logits", "restore_params", "split_episode",
           "split_roles", "supervised", "task_mesh", "tasks", "token_embeddings",
           "transformer", "weighted_cross_entropy"]

__getattr__ = module_getattr("mtpjax", {
    "MetaState": ("mtpjax", "TrainState"),
    "mesh_from_env": ("experiments._lib.env", "mesh_from_env"),
    "initialize_from_env": ("experiments._lib.env", "initialize_from_env"),
})

__version__ = "0.1.0"

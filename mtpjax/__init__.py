"""mtpjax: meta-learned prompts in JAX.

Parameters are one role-keyed pytree ({"shared", "head", "prompt", "inner_lr"}); models are
(init, apply) pairs of pure functions; the inner loop is a lax.scan; the outer loop is one
jitted, donated step vmapped over the tasks of a meta-batch.
"""

from mtpjax import mtl, pretrained, tasks
from mtpjax._src import prompts
from mtpjax._src.adapt import adapt, split_roles
from mtpjax._src.checkpoint import Checkpointer, CheckpointError, restore_params
from mtpjax._src.checks import check_finite
from mtpjax._src.data import split_episode
from mtpjax._src.evaluate import EvalResult, evaluate, make_evaluator, mean_ci95
from mtpjax._src.heads import (FewShotHead, class_means, proto_maml, prototype_classifier,
                               prototype_logits)
from mtpjax._src.losses import accuracy, cross_entropy, mse, supervised, weighted_cross_entropy
from mtpjax._src.meta import (ALGORITHMS, Algorithm, MetaLearner, MetaState, get_algorithm,
                              meta_learner)
from mtpjax._src.nets import (Model, Net, compose, context_prompt, conv4, identity, linear_head,
                              mlp)
from mtpjax._src.precision import mixed_precision
from mtpjax._src.protonet import ProtoNet, protonet
from mtpjax._src.sharding import initialize_from_env, mesh_from_env, param_spec, task_mesh
from mtpjax._src.transformer import token_embeddings, transformer
from mtpjax._src.types import (HEAD, INNER_LR, PROMPT, PROMPT_SHARED, ROLES, SHARED, Array,
                               Batch, Episode, LossFn, Params, PRNGKey, SampleFn)

__version__ = "0.1.0"

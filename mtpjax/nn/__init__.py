"""Networks as (init, apply) pairs of pure functions over plain pytrees: composition into a
role-keyed model, the MLP and Conv4 backbones, the small Transformer encoder, few-shot heads
(prototypes, Proto-MAML) and multi-task architectures (shared bottom, MMoE).

>>> import jax, jax.numpy as jnp
>>> from mtpjax import nn
>>> model = nn.compose(nn.mlp((8,)), nn.linear_head(2))
>>> params = model.init(jax.random.key(0), jnp.zeros((3, 4)))
>>> model.apply(params, jnp.zeros((3, 4))).shape
(3, 2)
"""

from mtpjax.nn._compose import CONTEXT_MODES, Model, Net, compose, identity, prompt_roles
from mtpjax.nn._conv4 import CONV_IMPLS, NORMS, auto_conv_impl, conv3x3, conv4, max_pool_2x2
from mtpjax.nn._fewshot import (DISTANCES, FewShotHead, class_means, proto_maml,
                                prototype_classifier, prototype_logits)
from mtpjax.nn._mlp import KERNEL_INITS, linear_head, mlp
from mtpjax.nn._multitask import MMoE, mmoe, shared_bottom, tower
from mtpjax.nn._transformer import token_embeddings, transformer

__all__ = ["CONTEXT_MODES", "CONV_IMPLS", "DISTANCES", "FewShotHead", "KERNEL_INITS", "MMoE",
           "Model", "NORMS", "Net", "auto_conv_impl", "class_means", "compose", "conv3x3",
           "conv4", "identity", "linear_head", "max_pool_2x2", "mlp", "mmoe", "prompt_roles",
           "proto_maml", "prototype_classifier", "prototype_logits", "shared_bottom",
           "token_embeddings", "tower", "transformer"]

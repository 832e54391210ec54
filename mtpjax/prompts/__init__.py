"""Prompt kinds as (init, apply) pairs, their initialisations, and the aggregation of per-task
prompts into one.

`init(key) -> (shared part, task part)`: the task part has role "prompt" (what prompt-only
adaptation adapts), the shared part role "prompt_shared". `apply` composes them into what the
backbone consumes (tokens, per-layer prefixes, a context vector; for images pixels, FiLM
feature prompts and VPT-deep tokens).

>>> import jax
>>> from mtpjax import prompts
>>> shared, task = prompts.static(4, 8).init(jax.random.key(0))
>>> shared is None, task.shape
(True, (4, 8))
"""

from mtpjax.prompts._aggregate import MPT, mpt_decompose, weighted_mean
from mtpjax.prompts._aggregate import mean as aggregate_mean
from mtpjax.prompts._kinds import (COMPOSE_MODES, Prompt, average, composed, context,
                                   ensemble_weights, ensembled, from_tokens, from_vocab,
                                   generated, mix, static, support_summary)
from mtpjax.prompts._visual import film, pad, pixels, vpt_deep

__all__ = ["COMPOSE_MODES", "MPT", "Prompt", "aggregate_mean", "average", "composed", "context",
           "ensemble_weights", "ensembled", "film", "from_tokens", "from_vocab", "generated",
           "mix", "mpt_decompose", "pad", "pixels", "static", "support_summary", "vpt_deep",
           "weighted_mean"]

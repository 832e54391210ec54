"""Type aliases and the two data structures every part of mtpjax speaks: Batch and Episode."""

from typing import Any, Callable, NamedTuple

import jax

Array = jax.Array
PRNGKey = jax.Array
ArrayTree = Any
Params = dict[str, ArrayTree]  # top level keyed by role (ROLES below)

# The roles a parameter can have. The top level of a params dict is keyed by role; algorithms
# choose what adapts (and what the outer loop updates) by naming roles, never by name-matching
# inside the tree.
SHARED = "shared"                # the shared network (backbone)
HEAD = "head"                    # task heads
PROMPT = "prompt"                # the per-task prompt: what prompt-only adaptation adapts
PROMPT_SHARED = "prompt_shared"  # prompt parameters shared across tasks: a shared prompt,
                                 # a prompt generator, a prompt bank and its keys
INNER_LR = "inner_lr"            # Meta-SGD's per-parameter inner learning rates
ROLES = (SHARED, HEAD, PROMPT, PROMPT_SHARED, INNER_LR)


class Batch(NamedTuple):
  """Inputs and targets of one set of examples. x: [n, ...], y: [n, ...]."""

  x: Array
  y: Array


class Episode(NamedTuple):
  """One task: a support set to adapt on and a query set to score on.

  A meta-batch is the same structure with a leading task axis on every array.
  """

  support: Batch
  query: Batch


# loss_fn(params, batch) -> scalar; the one signature adaptation and meta-learning need.
LossFn = Callable[[Params, Batch], Array]
# sample(key) -> Episode; a task family, jittable, drawing one task on the device.
SampleFn = Callable[[PRNGKey], Episode]

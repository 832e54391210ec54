"""Meta-learning: which roles adapt (a label choice) and how the meta-gradient is computed.

Every algorithm is a row of `ALGORITHMS`:

  fast   which roles the inner loop adapts (None: every role but "inner_lr")
  outer  which roles the outer optimizer updates (None: every role)
  rule   "maml" (differentiate the query loss through adaptation) or "reptile"
  first_order, learn_inner_lr
  reset  roles that start every task from zero and are not meta-learned (e.g. ("head",): the
         "zeroing trick" of Kao et al. 2022, which keeps first-order MAML's head from drifting)

so MAML, first-order MAML, Meta-SGD, ANIL, CAVIA and prompt meta-learning are one code path,
and Reptile is the one algorithm with its own outer rule.
"""

import dataclasses
from typing import Optional, Sequence

from mtpjax._src import types

@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A meta-learning algorithm as a choice over roles and a meta-gradient rule (see the
  module docstring for the fields); ALGORITHMS holds the presets, get_algorithm overrides."""

  name: str
  rule: str = "maml"  # "maml" | "reptile"
  fast: Optional[tuple[str, ...]] = None
  outer: Optional[tuple[str, ...]] = None
  first_order: bool = False
  learn_inner_lr: bool = False
  reset: tuple[str, ...] = ()


ALGORITHMS = {
    "maml": Algorithm("maml"),
    "fomaml": Algorithm("fomaml", first_order=True),
    "metasgd": Algorithm("metasgd", learn_inner_lr=True),
    "anil": Algorithm("anil", fast=(types.HEAD,)),
    # CAVIA: only the context adapts, and it restarts from zero for every task, so the outer
    # loop leaves it out.
    "cavia": Algorithm("cavia", fast=(types.PROMPT,),
                       outer=(types.SHARED, types.HEAD, types.PROMPT_SHARED)),
    # MetaPrompting-style: only the prompt adapts, and its initialisation is meta-learned.
    "prompt_maml": Algorithm("prompt_maml", fast=(types.PROMPT,)),
    "reptile": Algorithm("reptile", rule="reptile"),
}


def get_algorithm(name: str, *, fast: Optional[Sequence[str]] = None,
                  outer: Optional[Sequence[str]] = None,
                  first_order: Optional[bool] = None,
                  reset: Optional[Sequence[str]] = None) -> Algorithm:
  """Looks up a preset by name and optionally overrides what adapts and what is meta-learned.

  reset: roles that start every task from zero instead of a meta-learned initialisation
  (they must be among the roles that adapt, else they would stay zero).
  """
  if name not in ALGORITHMS:
    raise ValueError(f"unknown algorithm {name!r}; known: {sorted(ALGORITHMS)}")
  algo = ALGORITHMS[name]
  for roles, what in ((fast, "fast"), (outer, "outer"), (reset, "reset")):
    if roles is not None:
      bad = [r for r in roles if r not in types.ROLES]
      if bad or not roles:
        raise ValueError(f"{what} roles must be a non-empty subset of {types.ROLES}, got {roles!r}")
  algo = dataclasses.replace(
      algo,
      fast=tuple(fast) if fast is not None else algo.fast,
      outer=tuple(outer) if outer is not None else algo.outer,
      first_order=algo.first_order if first_order is None else bool(first_order),
      reset=tuple(reset) if reset is not None else algo.reset)
  if algo.fast is not None and any(r not in algo.fast for r in algo.reset):
    raise ValueError(f"reset roles {list(algo.reset)} must adapt (fast roles "
                     f"{list(algo.fast)}): a role reset to zero that never adapts stays zero")
  if types.INNER_LR in algo.reset:
    raise ValueError("the inner learning rates cannot be reset to zero")
  return algo


def fast_roles(algo: Algorithm, params: types.Params) -> tuple[str, ...]:
  if algo.fast is not None:
    return tuple(r for r in algo.fast if r in params)
  return tuple(r for r in params if r != types.INNER_LR)


def outer_roles(algo: Algorithm, params: types.Params) -> tuple[str, ...]:
  if algo.outer is not None:
    roles = tuple(r for r in algo.outer if r in params and r not in algo.reset)
  else:
    roles = tuple(r for r in params if r not in algo.reset)
  if algo.learn_inner_lr and types.INNER_LR not in roles and types.INNER_LR in params:
    roles += (types.INNER_LR,)
  return roles

"""Deprecated aliases: old public names that keep working for one release, with a warning."""

import importlib
import warnings
from typing import Callable


def module_getattr(module: str, aliases: dict[str, tuple[str, str]]) -> Callable[[str], object]:
  """A module-level __getattr__ serving `aliases`: {old name: (new module, new name)}.

  The new module is imported on first use, so an alias may point at code outside the library
  (the experiments' environment helpers) without the library importing it.
  """

  def __getattr__(name: str):
    if name not in aliases:
      raise AttributeError(f"module {module!r} has no attribute {name!r}")
    where, new = aliases[name]
    warnings.warn(f"{module}.{name} is deprecated and will be removed in the next release; use "
                  f"{where}.{new}", DeprecationWarning, stacklevel=2)
    try:
      return getattr(importlib.import_module(where), new)
    except ImportError:
      raise AttributeError(f"{module}.{name} moved to {where}.{new}, which is not importable "
                           f"here (it lives in the repository's experiments/, not the "
                           f"installed package)") from None

  return __getattr__

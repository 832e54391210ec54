"""Data as arguments, not constants: what a jitted function drawing from `sample(key)` reads.

A jitted function bakes every array it closes over into the compiled program as a constant:
a copy in each executable, and constant folding at compile time. For an episode family over a
data set that is seconds of compilation and memory per program: drawing 16 episodes from a
221 MB feature table compiled in 3.9 s and added 0.35 GB while compiling when closed over,
1.3 s and nothing as an argument (`.venv/bin/python -m benchmarks.hoist_compile`, 2 CPU
cores; tests/test_meta.py checks that the meta step holds no such constant). `hoist` splits
a bound `.sample` of a pytree (every episode family in mtpjax.tasks) into its arrays and a
function of them, so trainers and evaluators pass the arrays in.
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np


def hoist(sample: Optional[Callable], mesh: Optional[jax.sharding.Mesh] = None
          ) -> tuple[Any, Callable]:
  """(data, draw) with draw(data, key) == sample(key).

  When `sample` is a bound method of a pytree holding arrays (`family.sample`), data is the
  list of those arrays (as jax arrays, transferred once; replicated over `mesh` when given)
  and draw rebuilds the owner around them; any other callable (a plain function, a lambda)
  gives data None and is called as it is, its closure constant as before. So does a mesh
  spanning several processes, whose arguments would have to be global arrays.

  >>> import numpy as np, mtpjax as mj
  >>> family = mj.tasks.text.episodes(np.arange(12).reshape(6, 2), np.array([0, 0, 0, 1, 1, 1]),
  ...                                 ways=2, shots=1, queries=1)
  >>> data, draw = hoist(family.sample)
  >>> key = jax.random.key(0)
  >>> bool(jnp.all(draw(data, key).query.x == family.sample(key).query.x))
  True
  >>> hoist(lambda key: key)[0] is None        # a plain function is called as it is
  True
  """
  owner, func = getattr(sample, "__self__", None), getattr(sample, "__func__", None)
  if owner is None or func is None:
    return None, lambda data, key: sample(key)
  leaves, treedef = jax.tree.flatten(owner)
  is_array = [isinstance(x, (jax.Array, np.ndarray)) for x in leaves]
  if not any(is_array):
    return None, lambda data, key: sample(key)
  if mesh is not None and any(d.process_index != jax.process_index() for d in mesh.devices.flat):
    return None, lambda data, key: sample(key)
  arrays = [jnp.asarray(x) for x, a in zip(leaves, is_array) if a]
  if mesh is not None:
    arrays = jax.device_put(arrays, jax.sharding.NamedSharding(mesh,
                                                               jax.sharding.PartitionSpec()))

  def draw(data, key):
    it = iter(data)
    return func(jax.tree.unflatten(treedef, [next(it) if a else x
                                             for x, a in zip(leaves, is_array)]), key)

  return arrays, draw

"""Host memory: keep freed memory in the process so that XLA:CPU steps stop page-faulting.

XLA's CPU runtime allocates each step's temporary buffers afresh (hundreds of MB for a Conv4
MAML meta-step). With glibc's default malloc, buffers above the mmap threshold, and every
buffer that XLA's worker threads allocate in their own arenas, go back to the kernel when
freed. The next step touches fresh pages, and the kernel zeroes each one on a page fault.
On the Omniglot MAML step (benchmarks/omniglot_speed_notes.md) that was ~200,000 minor faults
and ~0.7 s of system time per 1.3 s step.

It is not a reliable win, so nothing calls it by default. Measured on that step (2-core CPU,
`python -m benchmarks.omniglot_speed --rounds 3 --steps 4 [--queries 15] [--retain_host_memory]`,
tcmalloc through LD_PRELOAD):
  1 query per class:    glibc 1.45 s (216k faults); retained 1.11 s (0 faults) in one run,
                        1.50 s (79k faults) in another; tcmalloc 1.02-1.04 s (~1k faults)
  15 queries per class: glibc 7.0 s; retained 13.4 s; tcmalloc 4.05-5.2 s
With one arena and every block on the heap, large steps fragment it and contend for its lock.
Preloading tcmalloc (LD_PRELOAD=.../libtcmalloc_minimal.so.4) is faster, and consistently so.
"""

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1


def retain_host_memory() -> bool:
  """Makes glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

  Sets, process-wide: one malloc arena (threads share the main heap), no mmap'd chunks (large
  blocks come from the heap too), and a trim threshold of 2 GiB (the heap is not shrunk).
  The costs: the process keeps its peak host memory until it exits, and steps with very large
  temporaries can get slower (module docstring). Device (GPU) memory is not affected.
  Call it before the first JAX computation: threads that already own an arena
  keep it. Calling it again is harmless.

  Returns:
    True when the settings were applied; False where they do not apply (not Linux, not
    glibc), and nothing changed.
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # glibc only; musl has no mallopt parameters to set
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))
  return all(mallopt(param, value) == 1 for param, value in settings)

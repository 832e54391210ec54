"""retain_host_memory: freed host memory is reused instead of page-faulted in afresh."""

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

import mtpjax as mj

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# Allocates, touches and frees a 64 MiB block 10 times (as XLA:CPU does with a step's temporary
# buffers) and prints the minor page faults per round after the first.
_PROBE = textwrap.dedent("""
    import ctypes, resource, sys
    sys.path.insert(0, {root!r})
    if sys.argv[1] == "retain":
      from mtpjax._src import hostmem
      assert hostmem.retain_host_memory()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 64 << 20
    def touch():
      p = libc.malloc(size)
      ctypes.memset(p, 1, size)
      libc.free(p)
    touch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
      touch()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")


def _faults_per_round(mode):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", _PROBE.format(root=root), mode],
                       capture_output=True, text=True, check=True)
  return float(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="retain_host_memory sets glibc malloc parameters")
def test_retained_memory_is_reused_without_page_faults():
  default, retained = _faults_per_round("default"), _faults_per_round("retain")
  # 64 MiB is 16,384 pages of 4 KiB (fewer with transparent huge pages); reused memory: ~0.
  assert default > 8 * 4 and retained < 4, (default, retained)
  assert retained < default / 8


def test_returns_false_where_it_does_not_apply(monkeypatch):
  monkeypatch.setattr(sys, "platform", "darwin")
  assert mj.retain_host_memory() is False

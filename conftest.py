"""Strict numerics for every test and doctest, several CPU devices so sharding code runs
without a GPU, and settings that keep the compile-bound suite short."""

import os
import tempfile

# Must be set before jax is imported anywhere.
# Tests are compile-bound (second-order steps through a Transformer): XLA's backend
# optimisation level 0 halves CPU compile time (7.7 s -> 4.1 s for a MAML step through the
# encoder), and XLA CPU's older loop emitters instead of its fusion emitters more than halve
# it again (XLA's compile time in the decoder's prompt tests: 45 s -> 19 s). Benchmarks and
# experiments run with XLA's defaults. Subprocesses inherit this.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 "
                      "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The experiments split tasks over every device they see; their tests run on one device
# (tests/test_distributed.py runs them on 4 and on 2 processes).
os.environ.setdefault("MTPJAX_DEVICES", "1")
# Many tests (and the subprocess runs of the experiment scripts) compile identical programs;
# a compilation cache private to this test session, shared by its xdist workers, compiles
# each once.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
_CACHE = (os.path.join(tempfile.gettempdir(), f"mtpjax-test-jax-cache-{_RUN}") if _RUN
          else tempfile.mkdtemp(prefix="mtpjax-test-jax-cache-"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_debug_nans", False)

"""Test setup: 8 simulated CPU devices so mesh/sharding code runs, fp32 matmuls for parity."""
import os
import tempfile

# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Training tests start the same small programs in several subprocesses: a persistent XLA cache
# (inherited through the environment) compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "anchoredit_jax_xla_cache"))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def cache_small_programs():
    """CLI tests build fresh jitted functions per main(); letting the persistent cache take even
    sub-second compiles makes the later runs of a module skip compilation."""
    old = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old)

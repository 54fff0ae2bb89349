"""Test setup: 8 simulated CPU devices so mesh/sharding code runs, fp32 matmuls for parity."""
import atexit
import os
import shutil
import tempfile

# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Training tests start the same small programs in several subprocesses: a persistent XLA cache
# (inherited through the environment) compiles each once. It is fresh per session, so a second
# run on the same machine is timed as a clean machine would run it (no programs left from before).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="anchoredit_jax_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, True)

import jax  # noqa: E402
import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def cache_small_programs():
    """CLI tests build fresh jitted functions per main(); letting the persistent cache take even
    sub-second compiles makes the later runs of a module skip compilation."""
    old = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old)


@pytest.fixture(scope="session")
def tiny_stage1_run(tmp_path_factory):
    """A 2-step stage-1 workdir of the test config (EMA decay 0.9, so EMA and raw weights differ; a
    held-out loss logged at step 2), trained once per test run and shared by the modules that only
    read it (edit CLI, release, quickstart): under pytest-xdist the workers share it through the
    run's common temporary folder, the first one to ask trains it under a file lock.
    Read-only (checked when the session ends): a test that changes a workdir copies it first."""
    from anchoredit_jax import train as train_lib
    from anchoredit_jax.config_lib import load_config

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    workdir = root / "tiny_stage1_run"
    with FileLock(str(root / "tiny_stage1_run.lock")):
        if not (workdir / "trained").exists():
            shutil.rmtree(workdir, ignore_errors=True)  # a worker that died half-way
            cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                           "configs", "stage1_shapes.py"), "test", **{
                "num_steps": 2, "val.sample_every": 0, "eval_every": 2, "checkpoint.every": 2,
                "checkpoint.async_save": False, "ema_decay": 0.9})
            train_lib.train(cfg, str(workdir))
            (workdir / "trained").touch()
    before = _listing(workdir)
    yield str(workdir)
    assert _listing(workdir) == before, "a test wrote into the shared run: copy it first"


def _listing(folder):
    """(path, size, mtime) of every file below folder."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*") if p.is_file())


# README runs the suite on two pytest-xdist workers, one file at a time each (--dist loadfile). These
# files take the longest (measured with --durations; docs/ci_history.md): handing them out first
# keeps one worker from starting a long file when the other has nothing left.
LONGEST_FIRST = ("test_train.py", "test_distill.py", "test_stage2.py", "test_dmd.py", "test_edit_cli.py",
                 "test_evaluate.py", "test_release.py", "test_mcie.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order

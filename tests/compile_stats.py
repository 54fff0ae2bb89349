"""pytest plugin: XLA compilations per test, to find where the suite's time goes.

    PYTHONPATH=tests python -m pytest -p compile_stats tests/test_memory.py

At the end it prints, per test, the backend compile seconds and the number of programs compiled
(jax.monitoring events), then the total. Run it without `-n` (xdist workers' figures do not reach
the summary).
Hundreds of programs for one test usually mean a model run op by op (each primitive compiled on
its own): jit it. Not loaded by default: the suite runs without it.
"""
import collections

import jax
import pytest

_COMPILE = "/jax/core/compile/backend_compile_duration"
_stats = collections.defaultdict(lambda: [0.0, 0])
_current = {"test": "(collection)"}


def _listen(event, duration, **_):
    if event == _COMPILE:
        s = _stats[_current["test"]]
        s[0] += duration
        s[1] += 1


jax.monitoring.register_event_duration_secs_listener(_listen)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current["test"] = item.nodeid
    yield


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    tr.section("XLA compilations per test (seconds, programs)")
    for test, (secs, n) in sorted(_stats.items(), key=lambda kv: -kv[1][0]):
        tr.write_line(f"{secs:7.1f} s {n:5d}  {test}")
    tr.write_line(f"{sum(s for s, _ in _stats.values()):7.1f} s {sum(n for _, n in _stats.values()):5d}  in all")

"""The entry points' persistent compilation cache: where it goes, how it is turned off, and that a
second process loads its programs from it instead of compiling them."""
import os
import subprocess
import sys

from anchoredit_jax import compile_cache

SCRIPT = """
import jax, jax.numpy as jnp
from anchoredit_jax import compile_cache
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)
print("dir", compile_cache.enable())
jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.ones(3)).block_until_ready()
print("hits", len(hits))
"""


def test_resolve():
    home = os.path.expanduser("~")
    assert compile_cache.resolve({}) == os.path.join(home, ".cache", "anchoredit_jax", "xla")
    assert compile_cache.resolve({"XDG_CACHE_HOME": "/c"}) == "/c/anchoredit_jax/xla"
    assert compile_cache.resolve({compile_cache.ENV: "~/x"}) == os.path.join(home, "x")
    assert compile_cache.resolve({compile_cache.ENV: "0"}) is None
    assert compile_cache.resolve({compile_cache.ENV: "off", "XDG_CACHE_HOME": "/c"}) is None
    assert compile_cache.resolve({"JAX_COMPILATION_CACHE_DIR": "/j", compile_cache.ENV: "/x"}) is None  # jax's own


def _run(tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", compile_cache.ENV)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env={**base, "XDG_CACHE_HOME": str(tmp_path), **env},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    return lines["dir"], int(lines["hits"]), proc.stderr


def test_second_process_loads_from_the_cache_and_zero_turns_it_off(tmp_path):
    where = tmp_path / "anchoredit_jax" / "xla"
    assert _run(tmp_path)[:2] == (str(where), 0)
    assert os.listdir(where)  # the sub-second program was written too
    folder, hits, _ = _run(tmp_path)
    assert folder == str(where) and hits >= 1  # ... and read back instead of compiled
    off = tmp_path / "off"
    assert _run(off, ANCHOREDIT_COMPILATION_CACHE="0")[:2] == ("None", 0)
    assert not off.exists()


def test_unusable_folder_is_a_warning_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the folder would go
    folder, hits, err = _run(tmp_path, ANCHOREDIT_COMPILATION_CACHE=str(blocker / "xla"))
    assert (folder, hits) == ("None", 0) and "compilation cache off: cannot use" in err


def test_help_and_bad_flags_make_no_cache_folder(tmp_path):
    """The CLIs turn the cache on after reading their flags: asking for --help writes nothing."""
    script = ("import contextlib, io\nfrom anchoredit_jax import edit, evaluate, quickstart\n"
              "for m in (edit, evaluate, quickstart):\n"
              "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
              "        m.main(['--help'])\n"
              "    with contextlib.suppress(SystemExit), contextlib.redirect_stderr(io.StringIO()):\n"
              "        m.main(['--no-such-flag'])\n")
    base = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", compile_cache.ENV)}
    proc = subprocess.run([sys.executable, "-c", script], env={**base, "XDG_CACHE_HOME": str(tmp_path)},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "anchoredit_jax").exists()

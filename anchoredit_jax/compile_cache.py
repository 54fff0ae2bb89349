"""JAX's persistent compilation cache for the command-line entry points.

Every `python -m anchoredit_jax.<tool>` compiles its programs afresh; with the cache on, a second
run of the same program (same model, shapes, jax version and machine) loads them from disk instead
(the edit CLI on the shipped model, 3 turns on the 2-core CPU: 14.4 s cold, 7.0 s from the cache; README).

    ANCHOREDIT_COMPILATION_CACHE unset   ->  $XDG_CACHE_HOME/anchoredit_jax/xla (default ~/.cache/...)
    ANCHOREDIT_COMPILATION_CACHE=DIR     ->  DIR
    ANCHOREDIT_COMPILATION_CACHE=0       ->  off
    JAX_COMPILATION_CACHE_DIR set        ->  jax's own setting, left as it is (this module does nothing)

Every program is cached, however short its compile (the CLIs run dozens of sub-second ones), unless
JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS says otherwise. The cache is keyed by the program, the
jax/XLA version and the device, so a stale entry is never used; deleting the folder is always safe.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import jax
from absl import logging

ENV = "ANCHOREDIT_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no")


def resolve(environ: Mapping[str, str]) -> str | None:
    """The folder the entry points should cache compiled programs in, or None (off, or jax's own
    JAX_COMPILATION_CACHE_DIR in charge)."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    setting = environ.get(ENV, "").strip()
    if setting.lower() in _OFF:
        return None
    if setting:
        return os.path.abspath(os.path.expanduser(setting))
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "anchoredit_jax", "xla")


def enable(environ: Mapping[str, str] | None = None) -> str | None:
    """Turns the cache on (call before the first compilation); returns its folder, or None if off.
    An unusable folder is a warning, not an error: the run goes on without the cache."""
    environ = os.environ if environ is None else environ
    path = resolve(environ)
    if path is None or jax.config.jax_compilation_cache_dir:  # off, or already set in this process
        return None
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError("not writable")
    except OSError as e:
        logging.warning("compilation cache off: cannot use %s (%s); set %s=DIR or %s=0", path, e, ENV, ENV)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path

"""Loading `configs/*.py` files outside absl flags (tests, notebooks, checkpoints)."""
from __future__ import annotations

import difflib
import importlib.util
import json
import math
import numbers
import os
import sys

import ml_collections

from anchoredit_jax.model import DiTConfig


class ConfigError(ValueError):
    """A config value (or a checkpoint or folder it names) that cannot work. The training CLIs print
    it as one line, `error: ...`, and exit 1; it is raised before the workdir is touched where it can be."""


def number_in(lo: float, hi: float = math.inf, *, integer: bool = False, open_lo: bool = False):
    """A rule for `check_values`: a real number (an integer if asked) in [lo, hi], or (lo, hi]."""
    kind = numbers.Integral if integer else numbers.Real

    def ok(x):
        if isinstance(x, bool) or not isinstance(x, kind) or not math.isfinite(x):
            return False
        return (x > lo if open_lo else x >= lo) and x <= hi

    what = "an integer" if integer else "a number"
    if hi == math.inf:
        return ok, f"{what} {'>' if open_lo else '>='} {lo:g}"
    return ok, f"{what} in {'(' if open_lo else '['}{lo:g}, {hi:g}]"


def one_of(allowed: tuple):
    """A rule for `check_values`: one of the allowed values."""
    return (lambda x: x in allowed), f"one of {allowed}"


def check_values(section: str, cfg, rules: dict) -> None:
    """Raises ConfigError naming the first key of `cfg` (config.<section>) its rule refuses.
    rules: key -> (predicate, what it wants), as `number_in` and `one_of` make them."""
    for key, (ok, want) in rules.items():
        if key in cfg and not ok(cfg[key]):
            raise ConfigError(f"config.{section}.{key} must be {want}, got {cfg[key]!r}")


def load_config(path: str, arg: str | None = None, **overrides) -> ml_collections.ConfigDict:
    """Runs `get_config([arg])` of a config file; overrides are dotted keys ("model.dtype"="bfloat16")."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg is not None else module.get_config()
    for key, value in overrides.items():
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise KeyError(f"config has no key {key!r} ({part!r} is missing)")
            node = node[part]
        if parts[-1] not in node:
            raise KeyError(f"config has no key {key!r}")
        node[parts[-1]] = value
    return config


def model_config(config: ml_collections.ConfigDict) -> DiTConfig:
    """The experiment config's `model` section as a validated DiTConfig."""
    return DiTConfig.from_dict(config.model.to_dict()).validate()


def check_config_flags(argv: list[str], flag: str = "config") -> None:
    """Exits with one line naming the problem when a `--config.KEY=V` flag names no key of the
    config file (absl would print a 40-line traceback ending in `AttributeError: 'KEY'`).

    Call before `app.run`. Anything it cannot resolve (no --config given, a config that fails to
    load) is left to absl, which reports those clearly itself.
    """
    path, keys = None, []
    for i, a in enumerate(argv[1:], 1):
        if a == f"--{flag}" and i + 1 < len(argv):
            path = argv[i + 1]
        elif a.startswith(f"--{flag}="):
            path = a.split("=", 1)[1]
        elif a.startswith(f"--{flag}."):
            keys.append(a[len(flag) + 3:].split("=", 1)[0])
    if path is None or not keys:
        return
    file, _, arg = path.partition(":")
    try:
        config = load_config(file, arg if ":" in path else None)
    except Exception:  # noqa: BLE001 -- absl loads it again and reports its own error
        return
    for key in keys:
        node = config
        for depth, part in enumerate(key.split(".")):
            if isinstance(node, (dict, ml_collections.ConfigDict)) and part in node:
                node = node[part]
                continue
            where = ".".join(key.split(".")[:depth]) or "the top level"
            if not isinstance(node, (dict, ml_collections.ConfigDict)):
                sys.exit(f"error: --{flag}.{key}: {where} in {file} is a value, not a section")
            options = list(node.keys()) if isinstance(node, (dict, ml_collections.ConfigDict)) else []
            close = difflib.get_close_matches(part, options, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else (
                f"; {where} has {', '.join(sorted(options))}" if options else "")
            sys.exit(f"error: --{flag}.{key}: {file} has no key {part!r} under {where}{hint}")


# What a run started from another (init_from, a distillation teacher) takes from its own config, not
# from the source's: differences here are usually an omission (stage-2 configs draw stage 1's
# default mix of edit types unless told), so the training programs log them.
INHERITED_DATA_KEYS = ("kind", "path", "resolution", "edit_weights")


def data_differences(config: ml_collections.ConfigDict, source: str) -> list[str]:
    """`--config.data.X=<source's value>` for each of INHERITED_DATA_KEYS (edit weights one by one)
    where this config differs from the config.json of the training workdir or release at `source`;
    [] where the source has no config.json (a diffusers or params folder)."""
    path = os.path.join(source, "config.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        theirs = json.load(f).get("data", {})
    ours = config.data.to_dict()

    def flat(d, prefix):
        return {f"{prefix}{k}": v for k, v in d.items()} if isinstance(d, dict) else {prefix.rstrip("."): d}

    out = []
    for key in INHERITED_DATA_KEYS:
        if key not in theirs:
            continue
        mine, src = flat(ours.get(key), f"{key}."), flat(theirs[key], f"{key}.")
        out += [f"--config.data.{k}={v}" for k, v in sorted(src.items()) if mine.get(k) != v]
    return out

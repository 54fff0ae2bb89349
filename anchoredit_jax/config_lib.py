"""Loading `configs/*.py` files outside absl flags (tests, notebooks, checkpoints)."""
from __future__ import annotations

import importlib.util
import os

import ml_collections

from anchoredit_jax.model import DiTConfig


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

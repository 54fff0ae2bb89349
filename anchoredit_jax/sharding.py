"""Mesh and logical-axis sharding (maxtext/big_vision style, on jax.sharding only).

Params carry logical axis names from init (`nn.with_logical_partitioning`); activations are
constrained with `nn.with_logical_constraint`. The rules that map logical names to the mesh axes
(data, fsdp, tensor) live in the config, so an experiment changes its parallelism there alone.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axes. Grouped: activations, then weights. Names absent here are replicated.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    # weights: FSDP shards the model dimension, tensor parallelism the heads and the FFN width
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("modulation", None),
    ("norm", None),
    ("patch", None),
    ("freq", None),
    ("text_embed", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None,
              num_devices: int = 0) -> Mesh:
    """A (data, fsdp, tensor) mesh over all (or the given, or the first num_devices) devices.

    One size may be -1 (the rest).
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices:
        devices = devices[:num_devices]
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh axes {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) needs {np.prod(sizes)} "
                         f"devices, {len(devices)} are available")
    try:  # topology-aware device order on real accelerators
        from jax.experimental import mesh_utils
        arr = mesh_utils.create_device_mesh(sizes, devices)
    except Exception:  # noqa: BLE001  (CPU / odd topologies: plain order is fine)
        arr = np.asarray(devices).reshape(sizes)
    return Mesh(arr, MESH_AXES)


def rules_from_config(rules) -> tuple:
    """Config rules (lists from ml_collections) -> hashable tuples."""
    return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes) for name, axes in rules)


def logical_shardings(boxed_tree, mesh: Mesh, rules) -> object:
    """NamedShardings for a tree of LogicallyPartitioned leaves (e.g. `jax.eval_shape(init)`)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules_from_config(rules))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis over data and fsdp, the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())

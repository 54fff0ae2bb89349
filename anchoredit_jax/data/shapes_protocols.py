"""Evaluation protocols on ShapesEdit: edit sequences, round trips and no-op reconstruction.

Every protocol maps (seed, num_turns, resolution, split) to an `EditSequence` with exact ground
truth, built from shapes_edit's scene and edit samplers, so phrasings and splits are the
benchmark's own:
- edit:      the ordinary held-out sequence (`shapes_edit.generate_sequence`).
- roundtrip: "add X", "remove X", "add X", ... on sequence `seed`'s source; the target after
             every remove is the source itself, the target after every add the same image
             again, so any difference between cycles is drift.
- noop:      K no-op instructions (several phrasings); every target is the source, every mask
             empty (M-turn reconstruction).
"""
from __future__ import annotations

import numpy as np

from anchoredit_jax.data import shapes_edit as se
from anchoredit_jax.data.images import resolution_hw

PROTOCOLS = ("edit", "roundtrip", "noop")
_MAX_TRIES = 500  # rejection sampling of one edit kind; an add is ~15% of draws
_MAX_SEEDS, _SEED_STRIDE = 20, 1_000_003


def _source_scene(seed: int, resolution, split: str) -> se.Scene:
    """The source scene of sequence `seed` of `split` (the one `generate_sequence` starts from)."""
    scenes, _ = se.generate_scenes(seed, 0, resolution, split)
    return scenes[0]


def _protocol_rng(seed: int, name: str) -> np.random.Generator:
    # Own stream per protocol: the choice of X never depends on the edit sequence's draws.
    return np.random.default_rng([int(seed), sum(map(ord, name))])


def _draw(rng, scene: se.Scene, split: str, accept) -> se.Edit | None:
    for _ in range(_MAX_TRIES):
        e = se.sample_edit(rng, scene, split, noop_prob=0.0)
        if accept(e):
            return e
    return None


def _roundtrip_edits(seed: int, resolution, split: str):
    """-> (source scene, add, remove, seed used). A source with no room for anything (4 objects
    and a hat) is replaced by that of seed + j * _SEED_STRIDE, the first j where an add applies."""
    for j in range(_MAX_SEEDS):
        used = seed + j * _SEED_STRIDE
        src = _source_scene(used, resolution, split)
        rng = _protocol_rng(used, "roundtrip")
        add = _draw(rng, src, split, lambda e: e.edit_type == "add")
        if add is None:
            continue
        rem = _draw(rng, add.scene, split, lambda e: e.edit_type == "remove" and e.ids_before == add.ids_after)
        if rem is not None:
            return src, add, rem, used
    raise ValueError(f"round-trip sequence {seed}: no add/remove pair found in {_MAX_SEEDS} sources")


def roundtrip_sequence(seed: int, num_turns: int, resolution=64, split: str = "heldout_seeds") -> se.EditSequence:
    """Turns alternate add X (odd turns) / remove X (even turns); X an object or a hat.

    The remove is drawn until it removes exactly what the add added (same label ids), so its
    scene renders to the source's pixels. Masks: the added thing's region, as shapes_edit's.
    The result's `seed` is the seed whose source was used (see _roundtrip_edits).
    """
    if num_turns < 1:
        raise ValueError(f"num_turns must be >= 1, got {num_turns}")
    src, add, rem, used = _roundtrip_edits(seed, resolution, split)
    edits = [add if k % 2 == 0 else rem for k in range(num_turns)]
    scenes = [src] + [e.scene for e in edits]
    return se.render_sequence(scenes, edits, resolution_hw(resolution), used)


def noop_sequence(seed: int, num_turns: int, resolution=64, split: str = "heldout_seeds") -> se.EditSequence:
    """K no-op turns on sequence `seed`'s source (phrasings drawn from `split`'s templates)."""
    if num_turns < 1:
        raise ValueError(f"num_turns must be >= 1, got {num_turns}")
    src = _source_scene(seed, resolution, split)
    rng = _protocol_rng(seed, "noop")
    edits = [se.sample_edit(rng, src, split, noop_prob=1.0) for _ in range(num_turns)]
    return se.render_sequence([src] * (num_turns + 1), edits, resolution_hw(resolution), seed)


def make_sequence(protocol: str, seed: int, num_turns: int, resolution=64,
                  split: str = "heldout_seeds") -> se.EditSequence:
    """Sequence `seed` of `protocol` (one of PROTOCOLS)."""
    if protocol == "edit":
        return se.generate_sequence(seed, num_turns, resolution, split)
    if protocol == "roundtrip":
        return roundtrip_sequence(seed, num_turns, resolution, split)
    if protocol == "noop":
        return noop_sequence(seed, num_turns, resolution, split)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")

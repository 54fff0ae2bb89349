"""grain input pipelines: single-turn pairs (stage 1) and K-turn sequences (stages 2/3).

Sequence sources (records are EditSequences; both are grain RandomAccessDataSources):
- ShapesEditSource: record i is ShapesEdit sequence `seed_offset + i`, generated on the fly.
- JsonlSource: records of a JSONL file or WebDataset shards (see jsonl.py), decoded on access.
They share a small duck-typed interface the pipeline uses: `len()`, `turns_with_target(i)` (no
image I/O), `load(i, num_turns)`, `load_pair(i, k)` and a deterministic `repr` (grain checks it
when restoring an iterator state).

Loaders (`make_loader`) turn them into batches, dicts of numpy arrays (B = per-process batch):
  kind="pair":     source, target [B, H, W, 3] float32 in [-1, 1]; mask [B, H, W] float32;
                   has_mask [B] float32; edit_type [B] int32 (index in EDIT_TYPES, -1 unknown);
                   record_index [B] int64; instruction_ids / instruction_mask [B, L].
  kind="sequence": frames [B, K+1, H, W, 3] float32 (frame 0 = source); mask [B, K, H, W];
                   turn_valid, has_mask [B, K] float32; edit_type [B, K] int32; record_index [B];
                   instruction_ids / instruction_mask [B, K, L].
A pair is (frame k, frame k+1) of some sequence for every turn whose both frames exist;
`first_turn_only` keeps only k = 0 (the source is an original image, never an edit result).
A sequence is the source plus its first K turns; a sequence stops at its first turn without a
target, and shorter sequences are padded to K with zero frames, empty masks, edit_type -1, the
instruction "" and turn_valid 0. Sequences whose first turn has no target are left out.

`tokenize(list[str]) -> (ids [n, L] int32, mask [n, L] int32/bool)` is called per record; it must
pad to a fixed L so that records batch. Strings never reach a batch (grain batches arrays).
Determinism: record i depends only on i; the order depends only on `seed` (grain's IndexSampler
shuffle, per epoch) and `worker_count` (with workers, grain batches within each worker; a saved
state restores only into a loader with the same worker_count). Sharding: each JAX process reads a
disjoint share (ShardByJaxProcess, or explicit `shard_options` for tests). Resume: `it = iter(loader)`;
`it.get_state()` -> bytes, `it.set_state(bytes)` continues exactly (orbax: grain.checkpoint /
PyGrainCheckpointHandler).
"""
from __future__ import annotations

from typing import Callable

import grain.python as grain
import numpy as np

from anchoredit_jax.data import jsonl
from anchoredit_jax.data.shapes_edit import (EDIT_TYPES, SPLITS, EditSequence, check_edit_weights, generate_pair,
                                             generate_sequence)
from anchoredit_jax.data.images import to_float

Tokenize = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]


def _edit_type_id(name: str) -> int:
    return EDIT_TYPES.index(name) if name in EDIT_TYPES else -1


# ----------------------------------------------------------------------------- sequence sources
class ShapesEditSource(grain.RandomAccessDataSource):
    """`num_sequences` ShapesEdit sequences of `num_turns` turns; record i uses seed seed_offset + i."""

    def __init__(self, num_sequences: int, num_turns: int, resolution=64, split: str = "train",
                 noop_prob: float = 0.1, seed_offset: int = 0, edit_weights=None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        self.num_sequences, self.num_turns, self.split = int(num_sequences), int(num_turns), split
        self.resolution = (resolution, resolution) if np.isscalar(resolution) else tuple(resolution)
        self.noop_prob, self.seed_offset = float(noop_prob), int(seed_offset)
        self.edit_weights = check_edit_weights(edit_weights)  # None: the generator's defaults

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, i) -> EditSequence:
        return self.load(int(i))

    def __repr__(self) -> str:
        return (f"ShapesEditSource(num_sequences={self.num_sequences}, num_turns={self.num_turns}, "
                f"resolution={self.resolution}, split={self.split!r}, noop_prob={self.noop_prob}, "
                f"seed_offset={self.seed_offset}, edit_weights={self.edit_weights})")

    def turns_with_target(self, i: int) -> list[bool]:
        return [True] * self.num_turns

    def load(self, i: int, num_turns: int | None = None) -> EditSequence:
        k = self.num_turns if num_turns is None else min(num_turns, self.num_turns)
        return generate_sequence(self.seed_offset + i, k, self.resolution, self.split, self.noop_prob,
                                 self.edit_weights)

    def load_pair(self, i: int, k: int) -> EditSequence:
        return generate_pair(self.seed_offset + i, k, self.resolution, self.split, self.noop_prob, self.edit_weights)


class JsonlSource(grain.RandomAccessDataSource):
    """SequenceRecords (from jsonl.read_jsonl / read_webdataset, or a .jsonl path) at `resolution`
    (int or (H, W); None keeps native sizes, which batch only if all images share one size)."""

    def __init__(self, records, resolution=None, image_root: str | None = None):
        if isinstance(records, str):
            records = jsonl.read_jsonl(records, image_root)
        self.records = list(records)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i) -> EditSequence:
        return self.load(int(i))

    def __repr__(self) -> str:
        r = self.records
        return f"JsonlSource(n={len(r)}, first={r[0].where!r}, last={r[-1].where!r}, resolution={self.resolution})"

    def turns_with_target(self, i: int) -> list[bool]:
        return [t.target is not None for t in self.records[i].turns]

    def load(self, i: int, num_turns: int | None = None) -> EditSequence:
        return jsonl.load_sequence(self.records[i], self.resolution, num_turns)

    def load_pair(self, i: int, k: int) -> EditSequence:
        return jsonl.load_pair(self.records[i], k, self.resolution)


def _valid_prefix(has_target) -> int:
    """Number of leading turns with a target."""
    n = 0
    while n < len(has_target) and has_target[n]:
        n += 1
    return n


def _pair_turns(has_target) -> list[int]:
    """Turns k whose two frames (k: the source or target k-1, and target k) both exist."""
    return [k for k, ok in enumerate(has_target) if ok and (k == 0 or has_target[k - 1])]


# ----------------------------------------------------------------------------- pair / sequence views
class PairSource(grain.RandomAccessDataSource):
    """Flat index over the (sequence i, turn k) pairs of a sequence source."""

    def __init__(self, source, first_turn_only: bool = False):
        self.source, self.first_turn_only = source, first_turn_only
        if isinstance(source, ShapesEditSource):  # every turn is complete: pair j = (j // K, j % K)
            self._per_seq, self._index = (1 if first_turn_only else source.num_turns), None
        else:
            pairs = [(i, k) for i in range(len(source)) for k in _pair_turns(source.turns_with_target(i))
                     if k == 0 or not first_turn_only]
            self._index = np.asarray(pairs, np.int64).reshape(-1, 2)
        if len(self) == 0:
            raise ValueError(f"{source!r} has no complete (source, target) pair")

    def __len__(self) -> int:
        return len(self.source) * self._per_seq if self._index is None else len(self._index)

    def __repr__(self) -> str:
        return f"PairSource({self.source!r}, first_turn_only={self.first_turn_only})"

    def __getitem__(self, j) -> dict:
        j = int(j)
        i, k = divmod(j, self._per_seq) if self._index is None else map(int, self._index[j])
        p = self.source.load_pair(i, k)
        return {"source": p.source, "target": p.targets[0], "mask": p.masks[0], "has_mask": bool(p.has_mask[0]),
                "edit_type": np.int32(_edit_type_id(p.edit_types[0])), "record_index": np.int64(j),
                "instructions": [p.instructions[0]]}


class SequenceSource(grain.RandomAccessDataSource):
    """Sequences padded / truncated to `num_turns` turns, with turn_valid."""

    def __init__(self, source, num_turns: int):
        self.source, self.num_turns = source, int(num_turns)
        if isinstance(source, ShapesEditSource):
            self._index = None
        else:  # only sequences with at least one complete turn
            self._index = np.asarray([i for i in range(len(source)) if _valid_prefix(source.turns_with_target(i))],
                                     np.int64)
        if len(self) == 0:
            raise ValueError(f"{source!r} has no sequence with a complete first turn")

    def __len__(self) -> int:
        return len(self.source) if self._index is None else len(self._index)

    def __repr__(self) -> str:
        return f"SequenceSource({self.source!r}, num_turns={self.num_turns})"

    def __getitem__(self, j) -> dict:
        j = int(j)
        i = j if self._index is None else int(self._index[j])
        K = self.num_turns
        seq = self.source.load(i, K)
        n = min(_valid_prefix(seq.has_target), K)
        h, w = seq.source.shape[:2]
        frames = np.zeros((K + 1, h, w, 3), np.uint8)
        frames[0], frames[1:n + 1] = seq.source, seq.targets[:n]
        mask = np.zeros((K, h, w), bool)
        mask[:n] = seq.masks[:n]
        pad = lambda xs, fill: list(xs[:n]) + [fill] * (K - n)  # noqa: E731
        return {"frames": frames, "mask": mask, "turn_valid": np.arange(K) < n,
                "has_mask": np.array(pad(seq.has_mask, False), bool),
                "edit_type": np.array([_edit_type_id(t) for t in pad(seq.edit_types, "")], np.int32),
                "record_index": np.int64(j), "instructions": pad(seq.instructions, "")}


# ----------------------------------------------------------------------------- transforms and loader
class ToArrays(grain.MapTransform):
    """uint8 images -> float32 [-1, 1]; bool -> float32; instructions -> token ids and mask."""

    def __init__(self, tokenize: Tokenize | None):
        self.tokenize = tokenize

    def map(self, record: dict) -> dict:
        out = {}
        for key, v in record.items():
            if key == "instructions":
                continue
            if key in ("source", "target", "frames"):
                out[key] = to_float(v)
            elif key in ("mask", "has_mask", "turn_valid"):
                out[key] = np.asarray(v, np.float32)
            else:
                out[key] = v
        if self.tokenize is not None:
            ids, mask = self.tokenize(list(record["instructions"]))
            single = "frames" not in record  # a pair holds one instruction: [L], not [1, L]
            out["instruction_ids"] = np.asarray(ids, np.int32)[0] if single else np.asarray(ids, np.int32)
            out["instruction_mask"] = np.asarray(mask, np.int32)[0] if single else np.asarray(mask, np.int32)
        return out


def make_loader(source, *, kind: str = "pair", batch_size: int, seed: int, tokenize: Tokenize | None = None,
                num_turns: int | None = None, first_turn_only: bool = False, num_epochs: int | None = None,
                shuffle: bool = True, shard: bool = True, shard_options: grain.ShardOptions | None = None,
                worker_count: int = 0, drop_remainder: bool = True) -> grain.DataLoader:
    """A grain.DataLoader of `kind` "pair" or "sequence" batches over a sequence source.

    batch_size is per JAX process. num_turns (sequences) defaults to the source's largest turn
    count. shard_options overrides `shard` (True: ShardByJaxProcess, False: NoSharding).
    num_epochs None repeats forever; the shuffle order differs per epoch but is fixed by `seed`.
    """
    if kind == "pair":
        data = PairSource(source, first_turn_only)
    elif kind == "sequence":
        if num_turns is None:
            num_turns = (source.num_turns if isinstance(source, ShapesEditSource)
                         else max(len(source.turns_with_target(i)) for i in range(len(source))))
        data = SequenceSource(source, num_turns)
    else:
        raise ValueError(f"kind must be 'pair' or 'sequence', got {kind!r}")
    if shard_options is None:
        shard_options = grain.ShardByJaxProcess(drop_remainder=True) if shard else grain.NoSharding()
    if worker_count:
        # grain 0.2.x workers read an absl flag and crash when flags were never parsed (scripts not
        # run through absl.app; google/grain#1355): use the flags' defaults then.
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    sampler = grain.IndexSampler(num_records=len(data), shard_options=shard_options, shuffle=shuffle,
                                 num_epochs=num_epochs, seed=seed)
    return grain.DataLoader(data_source=data, sampler=sampler,
                            operations=[ToArrays(tokenize), grain.Batch(batch_size, drop_remainder=drop_remainder)],
                            worker_count=worker_count, shard_options=shard_options)

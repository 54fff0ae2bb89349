"""grain pipelines: shapes, dtypes, padding, determinism, sharding, exact resume."""
import itertools

import grain.python as grain
import numpy as np
import pytest

from anchoredit_jax.data import jsonl, pipeline, shapes_edit as se

L = 8


def tokenize(texts):
    """Trivial deterministic tokenizer: bytes of the text, padded / cut to L."""
    ids = np.zeros((len(texts), L), np.int32)
    for i, t in enumerate(texts):
        b = list(t.encode()[:L])
        ids[i, :len(b)] = b
    return ids, (ids > 0).astype(np.int32)


def _take(loader_or_it, n):
    return list(itertools.islice(loader_or_it, n))


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_pair_batches():
    src = pipeline.ShapesEditSource(8, 3, 32)
    (b,) = _take(iter(pipeline.make_loader(src, kind="pair", batch_size=4, seed=0, tokenize=tokenize, shard=False)), 1)
    assert b["source"].shape == b["target"].shape == (4, 32, 32, 3) and b["source"].dtype == np.float32
    assert -1.0 <= b["source"].min() and b["source"].max() <= 1.0
    assert b["mask"].shape == (4, 32, 32) and b["mask"].dtype == np.float32
    assert b["has_mask"].shape == (4,) and b["edit_type"].shape == (4,) and b["edit_type"].dtype == np.int32
    assert b["instruction_ids"].shape == b["instruction_mask"].shape == (4, L)
    assert b["instruction_ids"].dtype == np.int32
    assert "instructions" not in b
    # Record j is turn j % 3 of sequence j // 3, exactly as the generator makes it.
    j = int(b["record_index"][0])
    p = se.generate_pair(j // 3, j % 3, 32)
    np.testing.assert_allclose(b["target"][0], p.targets[0] / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(b["instruction_ids"][0], tokenize(p.instructions)[0][0])
    assert se.EDIT_TYPES[b["edit_type"][0]] == p.edit_types[0]


def test_sequence_batches_shapes():
    src = pipeline.ShapesEditSource(6, 3, (24, 32))
    (b,) = _take(iter(pipeline.make_loader(src, kind="sequence", batch_size=2, seed=1, tokenize=tokenize)), 1)
    assert b["frames"].shape == (2, 4, 24, 32, 3) and b["mask"].shape == (2, 3, 24, 32)
    assert b["turn_valid"].shape == (2, 3) and b["turn_valid"].all() and b["turn_valid"].dtype == np.float32
    assert b["instruction_ids"].shape == (2, 3, L) and b["edit_type"].shape == (2, 3)
    seq = se.generate_sequence(int(b["record_index"][0]), 3, (24, 32))
    np.testing.assert_allclose(b["frames"][0, 0], seq.source / 127.5 - 1, atol=1e-6)


@pytest.fixture(scope="module")
def ragged(tmp_path_factory):
    """JSONL with sequences of 1, 2, 3 turns, and one whose turn 1 has no target."""
    out = tmp_path_factory.mktemp("ragged")
    seqs = [se.generate_sequence(i, k, 16) for i, k in enumerate([1, 2, 3, 3])]
    seqs[3].has_target = np.array([True, False, True])
    return pipeline.JsonlSource(jsonl.read_jsonl(jsonl.export_jsonl(seqs, str(out)))), seqs


def test_sequence_padding_and_turn_valid(ragged):
    src, seqs = ragged
    loader = pipeline.make_loader(src, kind="sequence", batch_size=4, seed=0, tokenize=tokenize, num_epochs=1)
    (b,) = _take(iter(loader), 1)
    assert b["frames"].shape == (4, 4, 16, 16, 3)
    for r in range(4):
        i = int(b["record_index"][r])
        n = {0: 1, 1: 2, 2: 3, 3: 1}[i]  # sequence 3 stops before its missing target
        np.testing.assert_array_equal(b["turn_valid"][r], np.arange(3) < n)
        np.testing.assert_allclose(b["frames"][r, 1:n + 1], seqs[i].targets[:n] / 127.5 - 1, atol=1e-6)
        assert (b["frames"][r, n + 1:] == -1).all() and not b["mask"][r, n:].any()
        assert (b["edit_type"][r, n:] == -1).all() and not b["instruction_ids"][r, n:].any()


def test_pairs_skip_missing_frames(ragged):
    src, _ = ragged
    pairs = pipeline.PairSource(src)
    # 1 + 2 + 3 turns, minus sequence 3's turns 1 (no target) and 2 (no previous frame).
    assert len(pairs) == 1 + 2 + 3 + 1
    assert len(pipeline.PairSource(src, first_turn_only=True)) == 4
    assert len(pipeline.PairSource(pipeline.ShapesEditSource(5, 3, 16), first_turn_only=True)) == 5


def test_determinism():
    src = pipeline.ShapesEditSource(12, 2, 16)
    def mk(seed):
        return iter(pipeline.make_loader(src, kind="pair", batch_size=3, seed=seed, tokenize=tokenize))
    a, b, c = _take(mk(5), 3), _take(mk(5), 3), _take(mk(6), 3)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x["record_index"], y["record_index"]) for x, y in zip(a, c))


def test_sharding_disjoint():
    src = pipeline.ShapesEditSource(10, 2, 16)  # 20 pairs
    seen = []
    for shard in range(2):
        opts = grain.ShardOptions(shard_index=shard, shard_count=2, drop_remainder=True)
        loader = pipeline.make_loader(src, kind="pair", batch_size=2, seed=3, num_epochs=1, shard_options=opts)
        seen.append({int(i) for b in loader for i in b["record_index"]})
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(20))


def test_exact_resume():
    src = pipeline.ShapesEditSource(9, 2, 16)
    mk = lambda: pipeline.make_loader(src, kind="sequence", batch_size=2, seed=7, tokenize=tokenize)  # noqa: E731
    it = iter(mk())
    _take(it, 3)
    state = it.get_state()
    assert isinstance(state, bytes)
    expected = _take(it, 4)  # crosses an epoch boundary (9 records)
    fresh = iter(mk())
    fresh.set_state(state)
    got = _take(fresh, 4)
    assert all(_same(x, y) for x, y in zip(expected, got))


def test_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        pipeline.make_loader(pipeline.ShapesEditSource(2, 1, 16), kind="video", batch_size=1, seed=0)


def test_config_edit_weights_reach_the_training_source():
    """config.data.edit_weights reweights the training pairs; a config saved before the key
    existed still loads (the generator's defaults)."""
    from anchoredit_jax import train
    from configs import stage1_shapes
    data = stage1_shapes.get_config("test").data
    data.num_sequences = 12
    for name in data.edit_weights:
        data.edit_weights[name] = 1.0 if name == "background" else 0.0
    src = train.make_source(data)
    assert {t for i in range(len(src)) for t in src[i].edit_types} <= {"background", "noop"}
    loader = pipeline.make_loader(src, kind="pair", batch_size=4, seed=0, shard=False)
    batch = next(iter(loader))
    assert set(batch["edit_type"][batch["edit_type"] >= 0]) <= {se.EDIT_TYPES.index(n) for n in ("background", "noop")}
    del data["edit_weights"]
    assert train.make_source(data).edit_weights is None

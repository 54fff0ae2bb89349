"""TextEmbeddingCache: exact embeddings, one encoder call per unique row, bounded, LRU eviction."""
import numpy as np

from anchoredit_jax.encoders import TextEmbeddingCache


class _Enc:
    """Stands in for Encoders: the 'embedding' of a row is its ids, so results are checkable."""

    def embed_text(self, frozen, ids, mask):
        return ids[..., None].astype(np.float32) * np.ones(3, np.float32), mask.astype(bool)


def _rows(*vals):
    ids = np.array([[v, v + 1] for v in vals], np.int32)
    return ids, np.ones_like(ids)


def _check(cache, vals):
    ids, mask = _rows(*vals)
    emb, m = cache(ids, mask)
    np.testing.assert_array_equal(emb[..., 0], ids)
    assert m.all()


def test_cache_serves_rows_it_evicts_and_drops_the_least_recently_used():
    cache = TextEmbeddingCache(_Enc(), None, max_entries=3)
    _check(cache, [1, 2, 3])
    assert cache.misses == 3
    _check(cache, [1, 4, 5, 6])  # over the bound within one batch, 1 (a hit) among the oldest
    assert cache.misses == 6 and len(cache._cache) == 3
    _check(cache, [4, 5, 6, 4])
    assert cache.misses == 6  # the three most recent stayed
    _check(cache, [5])
    _check(cache, [7])  # evicts 6, used longest ago (first-in-first-out would evict 4)
    _check(cache, [4, 5])
    assert cache.misses == 7 and len(cache._cache) == 3

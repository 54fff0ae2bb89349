"""Milliseconds to render one ShapesEdit record on one core, as the training loaders ask for them.

    python benchmarks/render_rate.py [N]      # N records of each kind (default 400)

"pair": a random (sequence, turn) of stage 1's source (4 turns, 64 px): scenes up to that turn,
two frames rendered. "sequence": a whole 6-turn sequence, stage 2's (7 frames). No grain, no
tokenizer: the loader's workers spend nearly all their time here (`loader_rate.py` measures the
whole loader), so pairs/s of stage 1 on a host scale with 1000 / ms-per-pair per worker.
"""
import sys
import time

import numpy as np

from anchoredit_jax.data.pipeline import PairSource, ShapesEditSource


def rate(fn, indices) -> float:
    fn(indices[0])  # imports, first allocations
    t = time.perf_counter()
    for i in indices:
        fn(i)
    return (time.perf_counter() - t) / len(indices) * 1e3


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    rng = np.random.default_rng(0)
    pairs = PairSource(ShapesEditSource(2_000_000, 4, 64, "train"))
    seqs = ShapesEditSource(2_000_000, 6, 64, "train")
    print(f"pair      {rate(pairs.__getitem__, rng.integers(0, len(pairs), n)):.2f} ms")
    print(f"sequence  {rate(seqs.__getitem__, rng.integers(0, len(seqs), n)):.2f} ms")


if __name__ == "__main__":
    main()

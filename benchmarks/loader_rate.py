"""Pairs/s of the stage-1 ShapesEdit loader (batch 64) with W grain workers, measured for S seconds.

    python benchmarks/loader_rate.py W S      # prints "PROBE <pairs/s>"

ShapesEdit is rendered on the host (`render_rate.py`: 3.9 ms a pair on one core here since
2026-12-05, 9.3 before), so on a GPU the loader, not the accelerator, sets the pace of stage 1:
launch/gpu_shapes_w256.sh sizes its run from this.
"""
import os
import sys
import time

from anchoredit_jax.config_lib import load_config
from anchoredit_jax.train import make_data

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "stage1_shapes.py")
BATCH = 64


def main():
    workers, secs = int(sys.argv[1]), float(sys.argv[2])
    c = load_config(CONFIG, batch_size=BATCH, **{"data.num_sequences": 2_000_000, "data.worker_count": workers})
    it, _ = make_data(c, "pair")
    for _ in range(3):  # past the workers' start-up
        next(it)
    t, n = time.time(), 0
    while time.time() - t < secs:
        next(it)
        n += BATCH
    print(f"PROBE {n / (time.time() - t):.0f}")


if __name__ == "__main__":
    main()

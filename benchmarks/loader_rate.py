"""Pairs/s of the stage-1 ShapesEdit loader (batch 64) with W grain workers, measured for S seconds.

    python benchmarks/loader_rate.py W S      # prints "PROBE <pairs/s>"

ShapesEdit is rendered on the host (~8.5 ms a pair on one core here), so on a GPU the loader, not
the accelerator, sets the pace of stage 1: launch/gpu_shapes_w256.sh sizes its run from this.
"""
import sys, time
from anchoredit_jax.train import make_data


def main():
    workers, secs = int(sys.argv[1]), float(sys.argv[2])
    import importlib.util
    spec = importlib.util.spec_from_file_location("c", "configs/stage1_shapes.py")
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    c = m.get_config(); c.batch_size = 64; c.data.num_sequences = 2_000_000; c.data.worker_count = workers
    it, _ = make_data(c, "pair")
    for _ in range(3):
        next(it)
    t, n = time.time(), 0
    while time.time() - t < secs:
        next(it); n += 64
    print(f"PROBE {n / (time.time() - t):.0f}")


if __name__ == "__main__":
    main()

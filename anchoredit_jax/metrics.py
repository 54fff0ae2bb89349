"""Training metrics: JSONL + TensorBoard event files, model FLOPs and utilisation (MFU), profiler traces."""
from __future__ import annotations

import json
import os
import sys

import jax
from absl import logging

from anchoredit_jax.config_lib import ConfigError
from anchoredit_jax.model import DiTConfig

# Dense bf16 peak per device, FLOP/s (vendor figures), for the MFU estimate.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def peak_flops_per_device(override: float | None = None) -> float | None:
    if override:
        return float(override)
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None  # CPUs: no meaningful peak, MFU is not reported


def dit_forward_flops(c: DiTConfig, num_frames: int, tokens_per_frame: int, text_len: int,
                      keys_per_frame: float) -> float:
    """Matmul FLOPs of one forward for one sequence (2 per multiply-add).

    keys_per_frame: average number of frames each frame attends (block-causal over F: (F+1)/2).
    """
    t = num_frames * tokens_per_frame
    d = c.dim
    per_token = 2 * (4 * d * d + 2 * d * c.ffn_dim + 2 * d * d)  # self q,k,v,o; FFN; cross q,o
    attn = 4 * d * (keys_per_frame * tokens_per_frame + text_len)  # QK^T and AV, self + cross
    cross_kv = 2 * 2 * d * d * text_len * num_frames  # cross k,v on the text of each frame
    blocks = c.num_layers * (t * (per_token + attn) + cross_kv)
    io = 2 * t * d * (c.in_channels + c.out_channels) * c.patch_size[1] * c.patch_size[2]
    return float(blocks + io)


class MetricWriter:
    """Appends {"step": s, ...} lines to metrics.jsonl and scalars to TensorBoard (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict):
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._jsonl.flush()
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def close(self):
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch whenever it is
    installed, only to accept torch tensors, and that costs every training start 1.5-2 s (we log floats)."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while tensorboardX loads
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]  # a later `import torch` works as usual
    return SummaryWriter


class StepProfiler:
    """A jax.profiler trace of the training steps numbered [first_step, first_step + num_steps) (the
    1-based numbers metrics.jsonl logs) into `logdir`, for TensorBoard's profile plugin (xprof) or
    Perfetto (the `*.trace.json.gz` beside the `*.xplane.pb`). first_step = -1: off. Process 0 only:
    on a pod one host's trace shows the step; each would write its own. Pick a step after the first
    (it compiles) and after a log step if the host-side metrics should stay out of the picture.

    Call `before(done, state)` ahead of step `done` and `after(done, state)` once it is dispatched;
    `close()` in a `finally` ends a trace the loop left early (exception, preemption, end of run).
    """

    def __init__(self, cfg, logdir: str, enabled: bool = True, start: int = 0):
        cfg = cfg or {}
        self.first, self.num = int(cfg.get("first_step", -1)), int(cfg.get("num_steps", 1))
        if self.first == 0 or self.first < -1 or self.num < 1:
            raise ConfigError(f"config.profile.first_step={self.first} must be -1 (off) or >= 1 (steps count "
                              f"from 1), and config.profile.num_steps={self.num} >= 1")
        self.logdir, self.enabled, self.active = logdir, enabled and self.first >= 1, False
        if self.enabled and self.first <= start:
            logging.warning("config.profile.first_step=%d: the run resumes after step %d, nothing is traced",
                            self.first, start)

    def before(self, done: int, state) -> None:
        if self.enabled and done == self.first:
            jax.block_until_ready(state)  # earlier steps' work stays out of the trace
            jax.profiler.start_trace(self.logdir)
            self.active = True

    def after(self, done: int, state) -> None:
        if self.active and done == self.first + self.num - 1:
            self.close(state)

    def close(self, state=None) -> None:
        if not self.active:
            return
        try:
            if state is not None:
                jax.block_until_ready(state)  # dispatch is asynchronous: the trace must see the steps run
        except Exception:  # noqa: BLE001 - a failed step (buffers donated or lost): its error, not this, is raised
            pass
        finally:
            jax.profiler.stop_trace()
        self.active = False
        logging.info("profile of steps %d-%d in %s (tensorboard --logdir %s with tensorboard-plugin-profile, "
                     "or its trace.json.gz in ui.perfetto.dev)", self.first, self.first + self.num - 1,
                     self.logdir, self.logdir)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

"""benchmarks/train_throughput.py: both sides time the same training step (same weights, same loss)."""
import os
import re
import sys

import pytest

pytest.importorskip("diffusers")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import train_throughput  # noqa: E402


def _first_losses(capsys, *flags):
    train_throughput.main(["--preset", "tiny", "--steps", "1", "--warmup", "1", *flags])
    out = capsys.readouterr().out
    losses = dict(re.findall(r"^\s*(jax|torch): .* tokens/s .* first loss ([0-9.]+)$", out, re.M))
    assert set(losses) == {"jax", "torch"} and "jax/torch tokens/s:" in out, out
    assert "jax attention in the compiled step: XLA (no cuDNN fused calls)" in out  # this CPU; cuDNN on GPUs
    return float(losses["jax"]), float(losses["torch"])


def test_jax_and_diffusers_steps_compute_the_same_loss(capsys):
    jax_loss, torch_loss = _first_losses(capsys)  # float32, full attention: diffusers' computation
    assert jax_loss == pytest.approx(torch_loss, abs=2e-6)
    causal, torch_again = _first_losses(capsys, "--jax-mode", "block_causal")  # frames see only the past
    assert torch_again == torch_loss and abs(causal - torch_loss) > 2e-5

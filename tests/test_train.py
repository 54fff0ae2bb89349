"""Stage-1 training: sharding invariance, exact resume after SIGKILL, SIGTERM, NaN guard, 2 processes, profiling."""
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from anchoredit_jax import train as train_lib
from anchoredit_jax.config_lib import load_config
from anchoredit_jax.metrics import read_jsonl
from runs import traced_steps

CONFIG = "configs/stage1_shapes.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
    base = {"val.sample_every": 0, "eval_every": 0}
    return load_config(os.path.join(ROOT, CONFIG), "test", **{**base, **overrides})


def _cmd(workdir, **overrides):
    base = {"val.sample_every": 0, "eval_every": 0}
    flags = [f"--config.{k}={v}" for k, v in {**base, **overrides}.items()]
    return [sys.executable, "-m", "anchoredit_jax.train", f"--config={CONFIG}:test", f"--workdir={workdir}", *flags]


def _env(devices=1, **extra):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _losses(workdir):
    out = {}
    for row in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        if "loss" in row:
            out[row["step"]] = row["loss"]  # a resumed run overwrites the killed run's steps
    return out


def _params(workdir, step):
    with ocp.StandardCheckpointer() as ck:
        return ck.restore(os.path.join(workdir, "checkpoints", str(step), "state"))["params"]


def _wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, f"training exited early with {proc.returncode}"
        assert time.time() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    """6 steps on one device, saved at 3 and 6: the reference of the sharded and the SIGKILL tests."""
    workdir = tmp_path_factory.mktemp("one_device")
    cfg = _config(num_steps=6, **{"checkpoint.every": 3, "checkpoint.async_save": False, "mesh.num_devices": 1})
    train_lib.train(cfg, str(workdir))
    return workdir


def test_sharded_steps_equal_single_device(one_device_run, tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")
    cfg = _config(num_steps=3, **{"checkpoint.every": 3, "checkpoint.async_save": False})
    cfg.mesh.update(dict(data=2, fsdp=2, tensor=2, num_devices=0))
    train_lib.train(cfg, str(tmp_path))
    l1, l8 = _losses(one_device_run), _losses(tmp_path)
    # eval_every = 0: no held-out loss, no best checkpoint
    assert not any("val_loss" in r for r in read_jsonl(str(tmp_path / "metrics.jsonl")))
    best = tmp_path / "best"
    assert not best.exists() or not os.listdir(best)
    print(f"losses one device {l1}, (2,2,2) mesh {l8}")
    np.testing.assert_allclose([l1[s] for s in (1, 2, 3)], [l8[s] for s in (1, 2, 3)], rtol=1e-5)
    p1, p8 = _params(one_device_run, 3), _params(tmp_path, 3)
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), p1, p8))
    print(f"max param difference after 3 steps: {max(diffs):.1e}")
    assert max(diffs) <= 1e-5


def test_sigkill_resume_is_exact(one_device_run, tmp_path):
    """A run killed after its save at step 3 and started again computes what the uninterrupted
    one-device run did (that one ran in this process: same program, same numbers)."""
    killed = tmp_path / "killed"
    # 1 s a step after the save at step 3: time to kill it before it saves the last one
    proc = subprocess.Popen(_cmd(killed, num_steps=6, **{"checkpoint.every": 3, "debug.step_sleep": 1.0}),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(killed / "checkpoints" / "3", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(_losses(killed)) < 6, "the run finished before it was killed"
    subprocess.run(_cmd(killed, num_steps=6, **{"checkpoint.every": 3}), env=_env(), check=True,
                   capture_output=True)
    a, b = _losses(one_device_run), _losses(killed)
    print({s: (a[s], b[s]) for s in range(4, 7)})
    assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]  # bit-identical, data included


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    proc = subprocess.Popen(_cmd(tmp_path, num_steps=200, **{"checkpoint.every": 3, "debug.step_sleep": 0.3}),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(tmp_path / "checkpoints" / "3", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert steps[-1] > 3 and steps[-1] < 200  # a save at the step where SIGTERM arrived
    assert _params(tmp_path, steps[-1])  # restorable


def test_nan_is_caught_named_and_not_saved(tmp_path):
    cfg = _config(num_steps=10, **{"debug.nan_at_step": 3, "checkpoint.every": 2, "checkpoint.async_save": False})
    with pytest.raises(train_lib.NonFiniteError, match="at step 3"):
        train_lib.train(cfg, str(tmp_path))
    steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert steps == [2]  # nothing written after the poisoned step
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(_params(tmp_path, 2)))


def test_two_processes_train_and_resume(tmp_path):
    """jax.distributed on localhost: 2 processes x 4 CPU devices train 3 steps, then resume to 6."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(num_steps, port):
        procs = [subprocess.Popen(_cmd(tmp_path, num_steps=num_steps, **{"checkpoint.every": 3}),
                                  env=_env(4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                           JAX_PROCESS_ID=str(i), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]

    run(3, port)
    assert (tmp_path / "checkpoints" / "3").exists()
    run(6, port + 1 if port < 65000 else port - 1)
    losses = _losses(tmp_path)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(np.isfinite(list(losses.values())))


def test_init_from_diffusers_with_reinit(tmp_path):
    """init_from copies every tensor, except those listed in init_reinit, and names a mismatch."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    import flax.linen as nn
    from anchoredit_jax.config_lib import model_config
    from anchoredit_jax.model import init_params

    mcfg = model_config(_config())
    torch.manual_seed(0)
    peer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=mcfg.num_heads, attention_head_dim=mcfg.head_dim,
        in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=mcfg.ffn_dim, num_layers=mcfg.num_layers)
    peer.save_pretrained(tmp_path / "dit", safe_serialization=True)
    fresh = nn.unbox(init_params(mcfg, jax.random.key(0)))
    with pytest.raises(ValueError, match="text_embedder/linear_1/kernel"):
        train_lib.load_init_params(str(tmp_path / "dit"), fresh, (), None)
    key = "condition_embedder/text_embedder/linear_1/kernel"
    params = train_lib.load_init_params(str(tmp_path / "dit"), fresh, (key,), None)
    np.testing.assert_array_equal(params["condition_embedder"]["text_embedder"]["linear_1"]["kernel"],
                                  fresh["condition_embedder"]["text_embedder"]["linear_1"]["kernel"])
    np.testing.assert_array_equal(params["blocks"]["attn1"]["to_q"]["kernel"][1],
                                  peer.blocks[1].attn1.to_q.weight.detach().numpy().T)


def test_entry_points_import_together():
    """train.py loads trained VAEs through train_vae: their absl flags must not collide."""
    r = subprocess.run([sys.executable, "-c",
                        "import anchoredit_jax.train, anchoredit_jax.train_vae, anchoredit_jax.edit"],
                       env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_metric_writer_does_not_import_torch(tmp_path):
    """tensorboardX imports torch whenever it is installed (1.5-2 s of a training start); the writer keeps
    it out, and torch still imports afterwards."""
    code = ("import sys; from anchoredit_jax import metrics; w = metrics.MetricWriter(sys.argv[1]); "
            "w.write(1, {'loss': 0.5}); w.close(); assert 'torch' not in sys.modules, 'torch imported'; "
            "import torch; print(torch.ones(1).sum().item())")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=_env(), capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["1.0"], r.stderr[-2000:]
    assert os.listdir(tmp_path / "tensorboard")  # the event file is written all the same


def test_ema_warmup():
    from anchoredit_jax.optim import ema_update
    ema, p = {"w": np.zeros(3, np.float32)}, {"w": np.ones(3, np.float32)}
    e = ema
    for step in range(20):
        e = ema_update(e, p, 0.999, step)
    assert float(e["w"][0]) > 0.8  # without the warm-up: 1 - 0.999**20 = 0.02
    late = ema_update(ema, p, 0.999, 10**6)
    np.testing.assert_allclose(late["w"], 0.001, rtol=1e-4)
    np.testing.assert_allclose(ema_update(ema, p, 0.999, 0, warmup=False)["w"], 0.001, rtol=1e-4)


def test_init_from_without_ema_warmup_keeps_the_full_decay(tmp_path, caplog):
    """ema_warmup=False: the EMA of a continued run starts at the loaded weights and moves at ema_decay
    from the first step (with the warm-up it would be nearly the new raw weights: d = 0.1 at step 0).
    Without init_from it would average the random initialisation: that is named."""
    common = {"checkpoint.async_save": False, "mesh.num_devices": 1, "checkpoint.every": 1,
              "ema_decay": 0.9, "ema_warmup": False}
    with caplog.at_level(logging.WARNING):
        train_lib.train(_config(num_steps=1, **common), str(tmp_path / "a"))
    assert "ema_warmup=False without config.init_from" in caplog.text and "holds 90% of it" in caplog.text
    caplog.clear()
    cfg = _config(num_steps=2, init_from=str(tmp_path / "a"), init_weights="params", **common)
    with caplog.at_level(logging.WARNING):
        train_lib.train(cfg, str(tmp_path / "b"))
    assert "ema_warmup" not in caplog.text
    with ocp.StandardCheckpointer() as ck:  # step 1 has learning rate 0 (warm-up): step 2 is the one that moves
        b = ck.restore(os.path.join(tmp_path / "b", "checkpoints", "2", "state"))
    a = _params(tmp_path / "a", 1)
    want = jax.tree.map(lambda x, y: 0.9 * np.asarray(x) + 0.1 * np.asarray(y), a, b["params"])
    jax.tree.map(lambda w, e: np.testing.assert_allclose(e, w, rtol=1e-5, atol=1e-7), want, b["ema"])
    moved = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()),
                                         a, b["params"]))
    assert max(moved) > 1e-4  # the step changed the weights, so the comparison above can fail


def test_previews_and_best_checkpoint_are_written(tmp_path):
    cfg = _config(num_steps=2, eval_every=2, **{"val.sample_every": 2, "checkpoint.async_save": False,
                                                "mesh.num_devices": 1})
    result = train_lib.train(cfg, str(tmp_path))
    assert np.isfinite(result["val_loss"])
    from PIL import Image
    sheet = Image.open(tmp_path / "samples" / "step_0000002.png")
    assert sheet.size[0] > 3 * 64  # source | prediction | target per row
    assert (tmp_path / "best" / "2").exists()


def test_data_echo_reuses_batches_and_resumes_exactly(tmp_path, monkeypatch):
    """echo=2: one loaded batch per 2 steps; SIGTERM mid-pair saves at the pair's end; resume is exact.
    The pair ends on a step the regular schedule also saves: it must be saved once, not twice."""
    loads = []
    real = train_lib.text_batches

    def counting(*args, **kw):
        next_batch = real(*args, **kw)
        return lambda: (loads.append(1), next_batch())[1]

    monkeypatch.setattr(train_lib, "text_batches", counting)
    common = {"data.echo": 2, "checkpoint.every": 2, "checkpoint.async_save": False, "mesh.num_devices": 1}
    train_lib.train(_config(num_steps=8, **common), str(tmp_path / "full"))
    assert len(loads) == 4
    loads.clear()
    train_lib.train(_config(num_steps=8, **common, **{"debug.sigterm_at_step": 3}), str(tmp_path / "cut"))
    steps = sorted(int(s) for s in os.listdir(tmp_path / "cut" / "checkpoints") if s.isdigit())
    assert steps == [2, 4] and len(loads) == 2  # stopped at the end of the second batch, not at step 3
    train_lib.train(_config(num_steps=8, **common), str(tmp_path / "cut"))
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert [a[s] for s in range(1, 9)] == [b[s] for s in range(1, 9)]
    assert a[1] != a[2]  # the second step of a batch draws new noise and timesteps


def test_data_echo_must_divide_the_checkpoint_interval(tmp_path):
    with pytest.raises(ValueError, match="echo=3 must be >= 1 and divide config.checkpoint.every=2"):
        train_lib.train(_config(num_steps=4, **{"data.echo": 3, "checkpoint.every": 2}), str(tmp_path))
    with pytest.raises(ValueError, match="echo=2 must .* and config.num_steps=5"):  # would end mid-batch
        train_lib.train(_config(num_steps=5, **{"data.echo": 2, "checkpoint.every": 2}), str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "b" / "checkpoints") or not os.listdir(tmp_path / "b" / "checkpoints")


def test_identity_pairs_read_a_noop_instruction_not_their_own():
    """A no-op pair (target = source) must not keep the edit's instruction: that would teach the model to
    ignore instructions. With every pair a no-op, the edit's own text cannot change the loss; without
    no-ops it does."""
    import ml_collections
    from anchoredit_jax import stage1
    from test_distill import _tiny_model  # perturbed: at initialisation the text would not reach the output

    model, params = _tiny_model()
    ks = jax.random.split(jax.random.PRNGKey(1), 6)
    src, tgt = jax.random.normal(ks[0], (4, 4, 4, 4)), jax.random.normal(ks[1], (4, 4, 4, 4))
    text_a, text_b = jax.random.normal(ks[2], (4, 3, 8)), jax.random.normal(ks[3], (4, 3, 8))
    noop_text, mask = jax.random.normal(ks[4], (2, 3, 8)), np.ones((4, 3), bool)

    @jax.jit
    def loss(text, noop_prob):
        cfg = ml_collections.ConfigDict(dict(noop_prob=noop_prob, cfg_drop_prob=0.0, outside_mask_weight=2.0,
                                             timestep_sampling="uniform", timestep_shift=1.0))
        return stage1.per_example_loss(params, model, ks[5], source=src, target=tgt, text=text, text_mask=mask,
                                       null_text=np.zeros((3, 8)), null_mask=np.arange(3) == 0, noop_text=noop_text,
                                       noop_mask=np.ones((2, 3), bool), edit_mask=np.zeros((4, 4, 4)),
                                       has_mask=np.zeros(4), cfg=cfg)[0]

    np.testing.assert_array_equal(loss(text_a, 1.0), loss(text_b, 1.0))
    assert np.all(np.abs(np.asarray(loss(text_a, 0.0) - loss(text_b, 0.0))) > 1e-6)


def test_profile_traces_the_steps_asked_and_stops_on_error(tmp_path):
    common = {"checkpoint.async_save": False, "mesh.num_devices": 1, "profile.num_steps": 2}
    train_lib.train(_config(num_steps=5, **common, **{"profile.first_step": 3}), str(tmp_path / "a"))
    assert traced_steps(tmp_path / "a") == [[3, 4]]
    # a NaN in the third step stops the run inside the window (2 to 11): the loop's exit ends the trace
    with pytest.raises(train_lib.NonFiniteError, match="at step 2"):
        train_lib.train(_config(num_steps=5, **{**common, "profile.num_steps": 10, "profile.first_step": 2,
                                                "debug.nan_at_step": 2}), str(tmp_path / "b"))
    assert traced_steps(tmp_path / "b") == [[2, 3]]
    jax.profiler.start_trace(str(tmp_path / "c"))  # raises if a trace were still running
    jax.profiler.stop_trace()
    with pytest.raises(ValueError, match="config.profile.first_step=0 must be -1"):
        train_lib.train(_config(num_steps=2, **{"profile.first_step": 0}), str(tmp_path / "d"))

"""PyTorch serving (convert/torch_serving.py) against the JAX editor: same weights, same noise, fp32.

A random tiny DiT (every tensor perturbed) goes through a diffusers folder into diffusers'
WanTransformer3DModel with the memory processors; 5 turns of editing run on both sides with the
JAX noise fed to PyTorch. Per turn the latents and the anchor memory must agree to 1e-4.
"""
import os
import sys
import warnings

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `convert` is a folder of scripts beside the library
    sys.path.insert(0, ROOT)

from anchoredit_jax import editor, interop  # noqa: E402
from anchoredit_jax import memory as mem_lib  # noqa: E402
from anchoredit_jax import text_encoder as te  # noqa: E402
from anchoredit_jax.model import DiTConfig, WanDiT, init_params  # noqa: E402
from convert import torch_serving as ts  # noqa: E402

TOL = 1e-4
GATE = 7.0  # about the median of the per-token change these random frames reach (4 to 10)
REGION = 1.0  # edit_region: splits these random samples' per-token distances from the null sample
TURNS = 5
H, W, L, B = 4, 6, 5, 2  # latent 4x6 (non-square), 5 text tokens, batch 2


def _random_params(cfg, seed):
    params = jax.tree.map(np.asarray, nn.unbox(init_params(cfg, jax.random.key(seed))))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: (p + 0.2 * rng.standard_normal(p.shape)).astype(np.float32), params)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cfg = DiTConfig(num_layers=2, num_heads=2, head_dim=12, ffn_dim=40, in_channels=4, out_channels=4, text_dim=20,
                    freq_dim=32, rope_max_seq_len=64, turn_stride=4).validate()
    params = _random_params(cfg, 0)
    folder = str(tmp_path_factory.mktemp("served") / "transformer")
    interop.save_diffusers_transformer(cfg, params, folder)
    from diffusers import WanTransformer3DModel

    dit = ts.ServedDiT(WanTransformer3DModel.from_pretrained(folder), cfg)
    return cfg, params, dit


def _texts(rng, k):
    """Per-turn instructions of different lengths; row 1 of turn 2 (or the last) is the null instruction."""
    text = rng.standard_normal((k, B, L, 20)).astype(np.float32)
    lengths = rng.integers(1, L + 1, (k, B))
    mask = np.arange(L)[None, None] < lengths[..., None]
    text = text * mask[..., None]
    null = np.zeros((B, L, 20), np.float32), np.broadcast_to(np.arange(L) == 0, (B, L)).copy()
    text[min(2, k - 1), 1], mask[min(2, k - 1), 1] = null[0][1], null[1][1]
    return text, mask, null


def _t(x):
    return torch.from_numpy(np.array(x))  # a writable copy


def _mem_diff(jmem, tmem):
    return max(float(np.abs(np.asarray(jmem.k) - tmem.k.numpy()).max()),
               float(np.abs(np.asarray(jmem.v) - tmem.v.numpy()).max()))


CASES = [  # (settings, window, keep_anchor): window 2 < 5 turns, so eviction happens
    (editor.SamplerSettings(num_steps=3, method="euler", shift=3.0, guidance=3.0), 2, True),
    (editor.SamplerSettings(num_steps=2, method="midpoint", shift=1.0, guidance=2.5), 2, True),
    (editor.SamplerSettings(num_steps=3, method="fireflow", shift=2.0, guidance=4.0), 3, False),
    # memory.read's weights (the anchor weight gated by each token's change, the newest frame weighed up)
    (editor.SamplerSettings(num_steps=2, method="euler", shift=2.0, guidance=2.0, anchor_weight=4.0, anchor_gate=GATE,
                            latest_weight=2.0), 2, True),
    (editor.SamplerSettings(num_steps=2, method="midpoint", guidance=1.0, latest_weight=3.0), 2, False),
    # the edit region: a second sample with the null instruction, the previous frame outside the region
    (editor.SamplerSettings(num_steps=2, method="euler", guidance=2.0, edit_region=REGION), 2, True),
    (editor.SamplerSettings(num_steps=2, method="midpoint", guidance=1.0, edit_region=REGION, outside_mix=0.3), 2,
     True),
]


IDS = [c[0].method + ("_weighed" if c[0].read_kw != editor.SamplerSettings().read_kw else "")
       + ("_region" if c[0].edit_region else "") for c in CASES]


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_five_turns_match_jax(models, case):
    cfg, params, dit = models
    settings, window, keep_anchor = CASES[case]
    model = WanDiT(cfg)
    rng = np.random.default_rng(case)
    source = rng.standard_normal((B, H, W, cfg.in_channels)).astype(np.float32)
    texts, masks, (null_t, null_m) = _texts(rng, TURNS)

    jstart = jax.jit(lambda p, s, nt, nm: editor.start(model, p, s, nt, nm, window=window, keep_anchor=keep_anchor))
    jturn = jax.jit(lambda p, m, t, tm, nt, nm, r: editor.edit_turn(model, settings, p, m, t, tm, nt, nm, r))
    jmem = jstart(params, source, null_t, null_m)
    tmem = ts.start(dit, _t(source).permute(0, 3, 1, 2), _t(null_t), _t(null_m), window=window,
                    keep_anchor=keep_anchor)
    assert _mem_diff(jmem, tmem) <= TOL  # the source frame, written with the null instruction
    key, gated, kept = jax.random.key(7), [], []
    for k in range(TURNS):
        rng_k = jax.random.fold_in(key, k)
        noise = np.asarray(jax.random.normal(rng_k, (B, H, W, cfg.in_channels)))  # what edit_turn draws
        prev = np.asarray(jmem.latest)
        jlat, jmem = jturn(params, jmem, texts[k], masks[k], null_t, null_m, rng_k)
        tlat, tmem = ts.edit_turn(dit, settings, tmem, _t(texts[k]), _t(masks[k]), _t(null_t), _t(null_m),
                                  _t(noise).permute(0, 3, 1, 2))
        err = float(np.abs(np.asarray(jlat) - tlat.permute(0, 2, 3, 1).numpy()).max())
        merr = _mem_diff(jmem, tmem)
        print(f"{settings.method} turn {k + 1}: latents max abs diff {err:.2e} (scale "
              f"{np.abs(np.asarray(jlat)).max():.2f}), memory {merr:.2e}")
        assert err <= TOL and merr <= TOL, (k, err, merr)
        np.testing.assert_allclose(tmem.change.numpy(), np.asarray(jmem.change), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(tmem.source.permute(0, 2, 3, 1).numpy(), np.asarray(jmem.source))
        if settings.anchor_gate:  # the gate splits the tokens, so both of its sides are compared
            gated.append(float((np.asarray(jmem.change) < settings.anchor_gate).mean()))
        if settings.edit_region and not settings.outside_mix:  # so does the region: tokens kept, and new ones
            kept.append(float(np.all(np.asarray(jlat) == prev, axis=-1).mean()))
            np.testing.assert_array_equal(tmem.latest.permute(0, 2, 3, 1).numpy(), tlat.permute(0, 2, 3, 1).numpy())
        assert tmem.count == int(jmem.count) and tmem.valid.numpy().tolist() == np.asarray(jmem.valid).tolist()
        assert ts.query_position(tmem) == int(mem_lib.query_position(jmem)[0])
    if settings.anchor_gate:
        assert 0.1 < np.mean(gated) < 0.9, gated
    if settings.edit_region and not settings.outside_mix:
        print(f"tokens kept from the previous frame, turn by turn: {kept}")
        assert 0.1 < np.mean(kept) < 0.9, kept


def test_memory_slots_match_jax(models):
    """Slot rules alone (anchor, window fill, eviction, no-anchor): write/query_position agree for 7 writes."""
    cfg, _, _ = models
    for keep_anchor in (True, False):
        jm = mem_lib.init_memory(cfg, 1, (H, W), window=2, keep_anchor=keep_anchor)
        tm = ts.init_memory(cfg, 1, (H, W), window=2, keep_anchor=keep_anchor)
        for i in range(7):
            new = np.full((cfg.num_layers, 1, (H // 2) * (W // 2), cfg.num_heads, cfg.head_dim), i + 1, np.float32)
            jm, tm = mem_lib.write(jm, new, new), ts.write(tm, _t(new), _t(new))
            assert np.array_equal(np.asarray(jm.k), tm.k.numpy()), (keep_anchor, i)
            assert np.asarray(jm.valid).tolist() == tm.valid.numpy().tolist()
            assert int(mem_lib.query_position(jm)[0]) == ts.query_position(tm)
            assert np.asarray(mem_lib.read(jm)["positions"])[0, :tm.num_valid].tolist() == ts.slot_positions(tm)


def test_consistency_sampler_with_given_step_noise(models):
    """The consistency sampler (guidance 1: conditional branch only) with the JAX per-step noise."""
    from anchoredit_jax import sampler

    cfg, params, dit = models
    if "consistency" not in sampler.METHODS:
        pytest.skip("this checkout has no consistency sampler")
    model = WanDiT(cfg)
    settings = editor.SamplerSettings(num_steps=3, method="consistency", guidance=1.0)
    rng = np.random.default_rng(3)
    source = rng.standard_normal((B, H, W, cfg.in_channels)).astype(np.float32)
    texts, masks, (null_t, null_m) = _texts(rng, 1)
    jmem = jax.jit(lambda p, s: editor.start(model, p, s, null_t, null_m, window=2))(params, source)  # not op by op
    tmem = ts.start(dit, _t(source).permute(0, 3, 1, 2), _t(null_t), _t(null_m), window=2)
    r = jax.random.key(1)
    jlat, _ = jax.jit(lambda *a: editor.edit_turn(model, settings, *a))(params, jmem, texts[0], masks[0], null_t,
                                                                         null_m, r)
    shape = (B, H, W, cfg.in_channels)
    noise = np.asarray(jax.random.normal(r, shape))
    step_noise = [np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(r, 1), i), shape))
                  for i in range(settings.num_steps)]  # sampler.sample's fresh noise per step
    tlat, _ = ts.edit_turn(dit, settings, tmem, _t(texts[0]), _t(masks[0]), _t(null_t), _t(null_m),
                           _t(noise).permute(0, 3, 1, 2), step_noise=[_t(n).permute(0, 3, 1, 2) for n in step_noise])
    err = float(np.abs(np.asarray(jlat) - tlat.permute(0, 2, 3, 1).numpy()).max())
    print(f"consistency, 3 steps: latents max abs diff {err:.2e}")
    assert err <= TOL


def test_text_encoder_matches_jax():
    jenc = te.TextEncoder.load(max_length=16)
    tenc = ts.TorchText(16)
    texts = ["make the background mint", "", "put a red hat on the creature and paint every star blue please now"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the third is truncated on both sides, with the same warning
        je, jm = jenc.encode(texts)
        tt, tm = tenc.encode(texts)
    err = float(np.abs(np.asarray(je) - tt.numpy()).max())
    print(f"text encoder torch vs jax: max abs diff {err:.2e}")
    assert err <= TOL and np.array_equal(np.asarray(jm), tm.numpy())
    assert not tt[1].any() and tm[1].tolist() == [True] + [False] * 15  # the null instruction

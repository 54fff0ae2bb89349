"""Whole-model export/import (convert/export_model.py, convert/import_model.py) and original Wan naming.

A training workdir with random (perturbed) weights and a random VAE is exported; diffusers loads
every part; import brings it back bit for bit, and the imported folders start a training run
(init_from + vae.workdir). The served bundle (PyTorch VAE, text encoder, DiT) edits like JAX.
"""
import functools
import json
import os
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `convert` is a folder of scripts beside the library
    sys.path.insert(0, ROOT)

from anchoredit_jax import checkpointing, editor, encoders, interop  # noqa: E402
from anchoredit_jax import text_encoder as te  # noqa: E402
from anchoredit_jax import train as train_lib  # noqa: E402
from anchoredit_jax import vae as vae_lib  # noqa: E402
from anchoredit_jax.config_lib import load_config, model_config  # noqa: E402
from anchoredit_jax.data.images import to_float  # noqa: E402
from anchoredit_jax.data.shapes_edit import generate_sequence  # noqa: E402
from anchoredit_jax.model import WanDiT, init_params  # noqa: E402
from convert import export_model, import_model  # noqa: E402
from convert import torch_serving as ts  # noqa: E402

TOL = 1e-4


def _same(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), jax.tree_util.keystr(path)


def _config(**overrides):
    return load_config(os.path.join(ROOT, "configs/stage1_shapes.py"), "test",
                       **{"val.sample_every": 0, "eval_every": 0, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir as training leaves it: config.json + checkpoints/3/state {params, ema, step}."""
    workdir = tmp_path_factory.mktemp("run")
    config = _config(ema_decay=0.9)
    mcfg = model_config(config)
    rng = np.random.default_rng(0)
    fresh = jax.tree.map(np.asarray, nn.unbox(init_params(mcfg, jax.random.key(0))))
    params = jax.tree.map(lambda p: (p + 0.2 * rng.standard_normal(p.shape)).astype(np.float32), fresh)
    ema = jax.tree.map(lambda p: (p + 0.05 * rng.standard_normal(p.shape)).astype(np.float32), params)
    with open(workdir / "config.json", "w") as f:
        f.write(config.to_json(indent=2))
    with ocp.StandardCheckpointer() as ck:
        ck.save(str(workdir / "checkpoints" / "3" / "state"), {"params": params, "ema": ema, "step": np.int32(3)})
    out = tmp_path_factory.mktemp("export") / "served"
    info = export_model.export(str(workdir), str(out), weights="ema", wan_original=True, window=2,
                               sampler=dict(num_steps=3))
    return dict(workdir=str(workdir), config=config, mcfg=mcfg, ema=ema, out=str(out), info=info)


def test_export_loads_in_diffusers(run):
    out = run["out"]
    dit = diffusers.WanTransformer3DModel.from_pretrained(os.path.join(out, "transformer"))
    want = interop.to_state_dict(run["ema"], run["mcfg"])
    got = {k: v.detach().numpy() for k, v in dit.state_dict().items()}
    assert set(got) == set(want)
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)
    vae, loading = diffusers.AutoencoderKLWan.from_pretrained(os.path.join(out, "vae"), output_loading_info=True)
    assert not any(loading[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), loading
    info = json.load(open(os.path.join(out, export_model.SERVED_FILE)))
    assert info["memory"] == {"window": 2, "keep_anchor": True} and info["sampler"]["num_steps"] == 3
    assert info["model"]["turn_stride"] == 4 and info["source"]["step"] == 3
    assert info["text_encoder"]["max_length"] == 24


def test_import_round_trip_is_bit_exact(run, tmp_path):
    written = import_model.import_model(str(tmp_path / "back"), exported=run["out"])
    model, params = interop.load_jax_params(written["init_from"])
    _same(params, run["ema"])
    assert model.config == run["mcfg"]
    vcfg, vparams = vae_lib.load_diffusers_vae(written["vae_workdir"])
    enc, frozen = encoders.load_encoders(run["config"])  # the run's (random) VAE
    _same(vparams, jax.device_get(frozen.vae))
    assert vcfg.latents_mean == tuple(np.asarray(frozen.latent_mean).tolist())
    # the original-Wan folder of the export reads back to the same params
    _, orig = interop.load_diffusers_transformer(os.path.join(run["out"], "transformer_wan_original"))
    _same(jax.device_get(orig), run["ema"])


# diffusers' scripts/convert_wan_to_diffusers.py applies these str.replace rules to original Wan keys
# (TRANSFORMER_KEYS_RENAME_DICT, T2V part, with its norm2/norm3 swap): an independent oracle.
DIFFUSERS_RULES = {
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj", "head.modulation": "scale_shift_table",
    "head.head": "proj_out", "modulation": "scale_shift_table", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
    "norm2": "norm__placeholder", "norm3": "norm2", "norm__placeholder": "norm3",
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
}


def test_original_wan_names(run, tmp_path):
    state = interop.read_safetensors(os.path.join(run["out"], "transformer_wan_original"))
    for key in ("blocks.0.self_attn.q.weight", "blocks.0.cross_attn.k.weight", "blocks.0.ffn.0.weight",
                "blocks.0.norm3.weight", "blocks.0.modulation", "patch_embedding.weight", "text_embedding.0.weight",
                "time_embedding.0.weight", "time_projection.1.weight", "head.head.weight", "head.modulation"):
        assert key in state, key
    assert "blocks.0.norm2.weight" not in state  # the FFN norm has no weights; the affine one is norm3
    for key in state:
        renamed = key
        for src, dst in DIFFUSERS_RULES.items():
            renamed = renamed.replace(src, dst)
        assert interop.original_key(renamed) == key
    # a Self-Forcing-style file (keys under "model.", one .safetensors with config.json beside it)
    os.makedirs(tmp_path / "sf")
    from safetensors.numpy import save_file

    save_file({"model." + k: v for k, v in state.items()}, str(tmp_path / "sf" / "generator.safetensors"))
    with open(tmp_path / "sf" / "config.json", "w") as f:
        json.dump(interop.config_to_wan_original(run["mcfg"]), f)
    written = import_model.import_model(str(tmp_path / "imp"),
                                        transformer=str(tmp_path / "sf" / "generator.safetensors"))
    _same(interop.load_jax_params(written["init_from"])[1], run["ema"])


def test_errors_name_the_problem(run, tmp_path):
    with pytest.raises(FileExistsError, match="not empty"):
        export_model.export(run["workdir"], run["out"])
    with pytest.raises(FileExistsError, match="not empty"):
        import_model.import_model(run["out"], exported=run["out"])
    bad = tmp_path / "bad"
    os.makedirs(bad)
    state = interop.read_safetensors(os.path.join(run["out"], "transformer_wan_original"))
    cfg = interop.config_to_wan_original(run["mcfg"])
    from safetensors.numpy import save_file

    for name, st, msg in (
            ("missing", {k: v for k, v in state.items() if k != "blocks.1.cross_attn.o.bias"},
             "blocks.1.cross_attn.o.bias"),
            ("extra", dict(state, **{"blocks.0.self_attn.extra.weight": state["head.head.bias"]}), "self_attn.extra"),
            ("shape", dict(state, **{"blocks.1.ffn.0.bias": state["head.head.bias"]}), "blocks.1.ffn.0.bias")):
        os.makedirs(bad / name)
        save_file(st, str(bad / name / interop.WEIGHTS_NAME))
        json.dump(cfg, open(bad / name / "config.json", "w"))
        with pytest.raises(ValueError, match=msg.replace(".", r"\.")):
            import_model.import_model(str(tmp_path / f"o_{name}"), transformer=str(bad / name))
        assert not os.path.exists(tmp_path / f"o_{name}")  # nothing half-written
    open(bad / "w.pt", "wb").close()
    with pytest.raises(ValueError, match="pickle"):
        import_model.import_model(str(tmp_path / "o_pt"), transformer=str(bad / "w.pt"))
    r = subprocess.run([sys.executable, "convert/import_model.py", "--out", str(tmp_path / "o"), "--vae",
                        str(tmp_path / "nope")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip() == f"error: --vae {tmp_path / 'nope'}: no such file or folder"
    r = subprocess.run([sys.executable, "convert/export_model.py", "--checkpoint", run["workdir"], "--out", run["out"]],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(f"error: --out {run['out']} exists")


def test_served_bundle_edits_like_jax(run):
    """The whole chain in PyTorch (VAE encode, MiniLM, 2 turns with the memory, VAE decode) vs JAX."""
    served = ts.load_served(run["out"])
    enc, frozen = encoders.load_encoders(run["config"])
    _, _, params = checkpointing.load_trained(run["workdir"])
    seq = generate_sequence(3, 2, 64, split="heldout_seeds")
    x = to_float(seq.source[None])
    jz = np.asarray(enc.encode_images(frozen, x))
    tz = served.vae.encode(_chw(x))
    errs = {"encode": float(np.abs(jz - _hwc(tz)).max())}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jtext = [enc.embed_text(frozen, *te.tokenize([t], run["config"].text.max_length)) for t in seq.instructions]
        ttext = [served.text.encode([t]) for t in seq.instructions]
    errs["text"] = max(float(np.abs(np.asarray(j[0]) - t[0].numpy()).max()) for j, t in zip(jtext, ttext))
    model = WanDiT(run["mcfg"])
    jn, tn = enc.null_text((1,)), served.text.null(1)
    # jitted as the editor runs them (op by op, XLA compiles every primitive on its own)
    jmem = jax.jit(lambda p, z: editor.start(model, p, z, *jn, window=served.window))(params, jz)
    jturn = jax.jit(functools.partial(editor.edit_turn, model, served.settings))
    tmem = ts.start(served.dit, tz, *tn, window=served.window)  # the PyTorch chain: its own encodings
    smem = ts.start(served.dit, _chw(jz), *tn, window=served.window)  # the PyTorch DiT on the JAX encodings
    for k, ((je, jm), (te_, tm)) in enumerate(zip(jtext, ttext)):
        r = jax.random.fold_in(jax.random.key(0), k)
        noise = _chw(jax.random.normal(r, (1,) + jmem.latent_shape))
        jl, jmem = jturn(params, jmem, je, jm, *jn, r)
        tl, tmem = ts.edit_turn(served.dit, served.settings, tmem, te_, tm, *tn, noise)
        sl, smem = ts.edit_turn(served.dit, served.settings, smem, _t(je), _t(jm), *tn, noise)
        errs[f"turn {k + 1}"] = float(np.abs(np.asarray(jl) - _hwc(sl)).max())
        errs[f"turn {k + 1} chain"] = float(np.abs(np.asarray(jl) - _hwc(tl)).max())
    errs["decode"] = float(np.abs(np.asarray(enc.decode_latents(frozen, jl)) - _hwc(served.vae.decode(_chw(jl)))).max())
    scale = float(np.abs(np.asarray(jl)).max())
    print("served bundle vs jax, max abs diff:", {k: f"{v:.1e}" for k, v in errs.items()},
          f"(latent scale {scale:.1f})")
    # fp32 rounding grows with the values: this perturbed random DiT (width 64, text 384, guidance 3)
    # makes latents of ~20, so the turns are held to 1e-4 relative to that scale (tests/
    # test_torch_serving.py holds a model with latents of ~10 to 1e-4 absolute over 5 turns).
    for k, v in errs.items():
        assert v <= TOL * (max(1.0, scale) if k.startswith("turn") else 1.0), (k, errs)


def _t(x):
    return torch.from_numpy(np.array(x))


def _chw(x):
    return _t(x).permute(0, 3, 1, 2)


def _hwc(x):
    return x.permute(0, 2, 3, 1).numpy()


def test_imported_folders_start_a_training_run(run, tmp_path):
    """import -> `init_from` + `vae.workdir` of a real run; with lr 0 its step-1 params are the exported ones."""
    written = import_model.import_model(str(tmp_path / "imp"), exported=run["out"])
    cfg = _config(**{"num_steps": 1, "checkpoint.every": 1, "checkpoint.async_save": False, "optim.lr": 0.0,
                     "init_from": written["init_from"], "vae.workdir": written["vae_workdir"]})
    train_lib.train(cfg, str(tmp_path / "wd"))
    with ocp.StandardCheckpointer() as ck:
        got = ck.restore(str(tmp_path / "wd" / "checkpoints" / "1" / "state"))["params"]
    _same(jax.device_get(got), run["ema"])


def test_torch_edit_cli(run, tmp_path):
    """convert/torch_edit.py: PNGs per turn, a log, and one-line errors (an existing --out is refused)."""
    from PIL import Image

    from convert import torch_edit

    src = str(tmp_path / "src.png")
    Image.fromarray(generate_sequence(1, 1, 64, split="heldout_seeds").source).save(src)
    out = str(tmp_path / "edits")
    argv = ["--model", run["out"], "--image", src, "--out", out, "--device", "cpu", "--instructions", "make it red",
            "remove the star"]
    assert torch_edit.main(argv) == 0
    log = json.load(open(os.path.join(out, "log.json")))
    assert [t["image"] for t in log["turns"]] == ["turn_01.png", "turn_02.png"] and log["window"] == 2
    assert np.asarray(Image.open(os.path.join(out, "turn_02.png"))).shape == (64, 64, 3)
    assert torch_edit.main(argv) == 1  # --out is not empty now
    assert torch_edit.main(argv[:5] + [str(tmp_path / "e2"), "--instructions", " "]) == 1  # empty instruction
    assert torch_edit.main(argv[:5] + [str(tmp_path / "e3"), "--anchor-gate", "0.3", "--instructions", "x"]) == 1
    assert not os.path.exists(tmp_path / "e3")  # refused before anything is written
    weighed = argv[:5] + [str(tmp_path / "e4"), "--anchor-weight", "4", "--anchor-gate", "0.3", "--latest-weight", "2",
                          "--instructions", "make it red", "remove the star"]
    assert torch_edit.main(weighed) == 0
    log = json.load(open(tmp_path / "e4" / "log.json"))
    assert (log["settings"]["anchor_weight"], log["settings"]["anchor_gate"], log["settings"]["latest_weight"]) == (
        4.0, 0.3, 2.0)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "e4" / "turn_02.png")),
                              np.asarray(Image.open(os.path.join(out, "turn_02.png"))))  # the weights are used
    assert torch_edit.main(argv[:5] + [str(tmp_path / "e5"), "--edit-region", "0", "--instructions", "x"]) == 1
    assert torch_edit.main(argv[:5] + [str(tmp_path / "e6"), "--edit-region", "1e9", "--instructions", "make it red",
                                       "remove the star"]) == 0  # no token changes that much: the source, twice
    assert json.load(open(tmp_path / "e6" / "log.json"))["settings"]["edit_region"] == 1e9
    assert np.array_equal(np.asarray(Image.open(tmp_path / "e6" / "turn_01.png")),
                          np.asarray(Image.open(tmp_path / "e6" / "turn_02.png")))


@pytest.mark.parametrize("kw", [dict(dim_mult=(1, 2, 2, 2), attn_scales=(), temperal_downsample=(False, True, True)),
                                dict(dim_mult=(1, 2, 2), attn_scales=(1.0, 0.5), temperal_downsample=(True, False))])
def test_vae_save_matches_diffusers_layout(kw, tmp_path):
    """JAX -> diffusers VAE: exactly diffusers' tensor set (3-D kernels, gammas, time_conv), strict load,
    the same single-frame decode, and a bit-exact way back."""
    cfg = vae_lib.WanVAEConfig(base_dim=8, z_dim=4, num_res_blocks=1, latents_mean=(0.1,) * 4,
                               latents_std=(2.0,) * 4, **kw)
    params = vae_lib.init_params(cfg, seed=1)
    vae_lib.save_diffusers_vae(cfg, params, str(tmp_path / "vae"))
    ref = diffusers.AutoencoderKLWan(**cfg.to_diffusers()).state_dict()
    got = interop.read_safetensors(str(tmp_path / "vae"))
    assert {k: tuple(v.shape) for k, v in ref.items()} == {k: v.shape for k, v in got.items()}
    peer = diffusers.AutoencoderKLWan.from_pretrained(str(tmp_path / "vae")).eval()
    z = np.random.default_rng(0).standard_normal((1, 2, 3, 4)).astype(np.float32)
    with torch.no_grad():
        want = peer.decode(torch.from_numpy(z).permute(0, 3, 1, 2)[:, :, None]).sample[:, :, 0].permute(0, 2, 3, 1)
    out = jax.jit(functools.partial(vae_lib.WanVAE(cfg).apply, method=vae_lib.WanVAE.decode))(params, z)  # not op by op
    assert float(np.abs(np.asarray(out) - want.numpy()).max()) <= TOL
    back_cfg, back = vae_lib.load_diffusers_vae(str(tmp_path / "vae"))
    _same(back, params)
    assert back_cfg == cfg
    with pytest.raises(FileExistsError, match="not empty"):
        vae_lib.save_diffusers_vae(cfg, params, str(tmp_path / "vae"))

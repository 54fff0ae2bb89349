"""CLIP and DINO feature networks (feature_nets.py) against transformers' PyTorch models on random
weights, their loading and errors, and the CLIP-I / CLIP-T / DINO / L1 / L2 metrics in the evaluation."""
import csv
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from anchoredit_jax import eval_metrics, feature_nets

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CHARS = "abcdefghijklmnopqrstuvwxyz"
TEXTS = ["a red cat", "x", "make the sky purple and add a moon"]


def _vocab():
    """A character-level BPE vocabulary (no merges): enough for CLIPTokenizer, offline."""
    vocab = {c: i for i, c in enumerate(CHARS)}
    vocab.update({c + "</w>": len(CHARS) + i for i, c in enumerate(CHARS)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return vocab


def _tower(**kw):
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **kw)


def _save_clip(path, legacy_eos=False, preprocessor=None):
    path.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    eos = 2 if legacy_eos else vocab["<|endoftext|>"]  # 2: the openai configs' value, argmax pooling
    cfg = transformers.CLIPConfig(
        text_config=_tower(vocab_size=len(vocab), max_position_embeddings=40, bos_token_id=vocab["<|startoftext|>"],
                           eos_token_id=eos, pad_token_id=vocab["<|endoftext|>"]),
        vision_config=_tower(image_size=32, patch_size=8), projection_dim=24)
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    if preprocessor:
        (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model, tok


def _save_vit(path):
    torch.manual_seed(1)
    model = transformers.ViTModel(transformers.ViTConfig(**_tower(image_size=32, patch_size=8))).eval()
    model.save_pretrained(str(path))
    return model


def _images(n=3, size=32, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _pixels(net, x):
    """What the network sees: our preprocessing, as NCHW torch input."""
    return torch.tensor(np.asarray(feature_nets._preprocess(jnp.asarray(x), net.tower.image_size, net.mean, net.std)))\
        .permute(0, 3, 1, 2)


@pytest.mark.parametrize("legacy_eos", [False, True])
def test_clip_matches_transformers(tmp_path, legacy_eos):
    model, tok = _save_clip(tmp_path / "clip", legacy_eos)
    clip = feature_nets.load_clip(tmp_path / "clip")
    x = _images()
    ids = clip.tokenize(TEXTS)
    assert ids.shape == (3, 40)
    np.testing.assert_array_equal(ids, np.array(tok(TEXTS, padding="max_length", max_length=40)["input_ids"]))
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), pixel_values=_pixels(clip, x))
    np.testing.assert_allclose(np.asarray(clip.image(jnp.asarray(x))), out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(clip.text(TEXTS)), out.text_embeds.numpy(), atol=1e-5)
    # Any input size is resized to the network's; the embeddings are unit vectors.
    e = np.asarray(clip.image(jnp.asarray(_images(2, 64))))
    np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1.0, rtol=1e-5)


def test_dino_matches_transformers_in_both_key_layouts(tmp_path):
    model = _save_vit(tmp_path / "dino")
    dino = feature_nets.load_dino(tmp_path / "dino")
    assert (dino.mean, dino.std) == (feature_nets.IMAGENET_MEAN, feature_nets.IMAGENET_STD)
    x = _images()
    with torch.no_grad():
        cls = model(pixel_values=_pixels(dino, x)).last_hidden_state[:, 0].numpy()
    ours = np.asarray(dino.image(jnp.asarray(x)))
    np.testing.assert_allclose(ours, cls / np.linalg.norm(cls, axis=-1, keepdims=True), atol=1e-5)
    # The hub's DINO files use transformers' older names (encoder.layer.N.attention.attention.query ...),
    # some with a "vit." prefix: the same weights under those names give the same features.
    from safetensors.numpy import load_file, save_file

    old = {}
    for k, v in load_file(str(tmp_path / "dino" / "model.safetensors")).items():
        for new, hub in ((".attention.q_proj", ".attention.attention.query"),
                         (".attention.k_proj", ".attention.attention.key"),
                         (".attention.v_proj", ".attention.attention.value"),
                         (".attention.o_proj", ".attention.output.dense"),
                         (".mlp.fc1", ".intermediate.dense"), (".mlp.fc2", ".output.dense")):
            k = k.replace(new, hub)
        old["vit." + k.replace("layers.", "encoder.layer.")] = v
    assert "vit.encoder.layer.1.attention.attention.query.weight" in old
    (tmp_path / "hub").mkdir()
    save_file(old, str(tmp_path / "hub" / "model.safetensors"))
    (tmp_path / "hub" / "config.json").write_text((tmp_path / "dino" / "config.json").read_text())
    np.testing.assert_array_equal(np.asarray(feature_nets.load_dino(tmp_path / "hub").image(jnp.asarray(x))), ours)


def test_preprocessor_config_sets_normalisation(tmp_path):
    _save_clip(tmp_path / "clip", preprocessor={"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0]})
    clip = feature_nets.load_clip(tmp_path / "clip")
    assert clip.mean == (0.5, 0.5, 0.5) and clip.std == (0.25, 0.5, 1.0)
    px = feature_nets._preprocess(jnp.zeros((1, 32, 32, 3)), 32, clip.mean, clip.std)  # grey 0.5 -> 0
    np.testing.assert_allclose(np.asarray(px), 0.0, atol=1e-6)


def test_library_does_not_import_torch(tmp_path):
    _save_clip(tmp_path / "clip")
    code = (f"import sys, anchoredit_jax.feature_nets as f; c = f.load_clip({str(tmp_path / 'clip')!r}); "
            "c.text(['a cat']); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_bad_folders_one_clear_error(tmp_path):
    with pytest.raises(feature_nets.FeatureNetError, match="no config.json"):
        feature_nets.load_dino(tmp_path)
    _save_vit(tmp_path / "vit")
    with pytest.raises(feature_nets.FeatureNetError, match="model_type is 'vit', expected 'clip'"):
        feature_nets.load_clip(tmp_path / "vit")
    cfg = json.loads((tmp_path / "vit" / "config.json").read_text())
    (tmp_path / "vit" / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=128)))
    with pytest.raises(feature_nets.FeatureNetError,
                       match=r"vit parameter block_0/fc1/bias has shape \(64,\), config.json says \(128,\)"):
        feature_nets.load_dino(tmp_path / "vit")
    (tmp_path / "vit" / "config.json").write_text(json.dumps(dict(cfg, model_type="dinov2")))
    with pytest.raises(feature_nets.FeatureNetError, match="DINOv2 is not ported"):
        feature_nets.load_dino(tmp_path / "vit")


def test_feature_metrics_properties():
    """Identical images score 1; a caption's score is the cosine of its embedding with the image's;
    validity follows targets, captions and padding; L1 / L2 have their closed forms."""
    rng = np.random.RandomState(0)
    k, b = 2, 3
    feats = {}

    def embed(x):  # a fixed random projection, normalised (any embedder would do)
        proj = jnp.asarray(np.random.RandomState(1).normal(size=(x[0].size, 8)), jnp.float32)
        e = x.reshape(x.shape[0], -1) @ proj
        feats["last"] = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
        return feats["last"]

    images = jnp.asarray(rng.uniform(-1, 1, (k, b, 8, 8, 3)), jnp.float32)
    targets = images.at[1].set(-images[1])
    source = images[0]
    caption = np.zeros((k, b, 8), np.float32)
    caption[0, 0, 0] = 1.0
    has_caption = jnp.asarray(caption.any(-1))
    ones = jnp.ones((k, b), bool)
    has_target = ones.at[1, 2].set(False)
    exists = ones.at[1, 1].set(False)
    out = eval_metrics.feature_metrics({"clip": embed, "dino": embed}, images, targets, source, jnp.asarray(caption),
                                       has_caption, has_target, exists)
    assert set(out) == set(eval_metrics.FEATURE_METRICS)
    np.testing.assert_allclose(np.asarray(out["clip_i"][0][0]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["dino"][0][1]), -1.0, rtol=1e-5)  # negated image: opposite embedding
    np.testing.assert_allclose(np.asarray(out["source_dino"][0][0]), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out["clip_i"][1]), np.asarray(has_target & exists))
    np.testing.assert_array_equal(np.asarray(out["clip_t"][1]), np.asarray(has_caption))
    fi = np.asarray(embed(images[0, :1]))
    assert float(out["clip_t"][0][0, 0]) == pytest.approx(float(fi[0, 0]), abs=1e-6)
    z = jnp.zeros((k, b, 8, 8), bool)
    m = eval_metrics.per_turn_metrics(lambda x, y: jnp.zeros(x.shape[0]), images, jnp.clip(images + 0.2, -2, 2), source,
                                      z, ones, ones, ones)
    np.testing.assert_allclose(np.asarray(m["l1"][0]), 0.1, rtol=1e-5)  # 0.2 in [-1, 1] is 0.1 in [0, 1]
    np.testing.assert_allclose(np.asarray(m["l2"][0]), 0.01, rtol=1e-4)


def test_evaluate_with_clip_dino_and_captions(tmp_path):
    """--clip / --dino add their metrics to every output; CLIP-T counts only captioned turns."""
    from anchoredit_jax import evaluate
    from anchoredit_jax.data import jsonl
    from anchoredit_jax.data.shapes_edit import generate_sequence

    _save_clip(tmp_path / "clip")
    _save_vit(tmp_path / "dino")
    seqs = [generate_sequence(i, 3, 64, split="heldout_seeds") for i in range(2)]
    seqs[0].captions = ["a red cat", "", "a blue sky"]
    data = jsonl.export_jsonl(seqs, str(tmp_path / "data"))
    assert [t.caption for t in jsonl.read_jsonl(data)[0].turns] == seqs[0].captions
    ckpt = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "shapes_stage3")
    out = tmp_path / "out"
    assert evaluate.main(["--checkpoint", f"s3={ckpt}", "--turns", "3", "--num-sequences", "2", "--batch-size", "2",
                          "--methods", "naive", "--jsonl", data, "--clip", str(tmp_path / "clip"),
                          "--dino", str(tmp_path / "dino"), "--out", str(out), "--sheet", "0"]) == 0
    with open(out / "metrics.csv") as f:
        rows = {(r["metric"], r["turn"]): r for r in csv.DictReader(f)}
    assert [int(rows[("clip_t", t)]["n"]) for t in "123"] == [1, 0, 1]
    for metric in ("clip_i", "dino", "source_clip_i", "source_dino", "l1", "l2"):
        assert [int(rows[(metric, t)]["n"]) for t in "123"] == [2, 2, 2], metric
    assert all(-1.0 <= float(rows[(m, "1")]["value"]) <= 1.0 for m in eval_metrics.FEATURE_METRICS)
    assert (out / "metric_clip_i.png").is_file() and "dino" in (out / "table.md").read_text()
    assert evaluate.main(["--checkpoint", ckpt, "--clip", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert evaluate.main(["--checkpoint", ckpt, "--dino", str(tmp_path / "clip"), "--out", str(tmp_path / "o2")]) == 1
    assert not (tmp_path / "o2").exists()  # the folder is checked before anything is written

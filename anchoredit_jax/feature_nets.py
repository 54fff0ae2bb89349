"""Frozen feature networks for real-data metrics: CLIP (both towers) and DINO (a HF ViTModel), in Flax.

The edit benchmarks of the field (MagicBrush, Emu Edit) report CLIP-I and DINO (cosine similarity of
an output's image embedding to the target's) and CLIP-T (of the output's CLIP image embedding to a
caption of the target). These are their networks, ported as `text_encoder.py` ports BERT: Flax linen
modules, weights read from a HuggingFace folder (config.json + model.safetensors, as
`save_pretrained` or the hub writes them) with `safetensors.numpy`, never torch, never the network —
the user supplies the folder (e.g. openai/clip-vit-base-patch32, facebook/dino-vits16).

    clip = load_clip("weights/clip-vit-base-patch32")     # .image(images) -> [N, D], .text(strings) -> [N, D]
    dino = load_dino("weights/dino-vits16")               # .image(images) -> [N, D]

`image` takes images in the project's convention ([N, H, W, 3] in [-1, 1], any square-or-not size),
resizes them (bicubic, antialiased) to the network's square input and normalises them with the
folder's preprocessor_config.json mean/std (the family's defaults without one). It is pure and
jittable. Resizing is jax.image's, not PIL's, so figures can differ from a PyTorch pipeline's in the
third decimal; the networks themselves match transformers' (tests/test_feature_nets.py).
Embeddings come L2-normalised: CLIP's projected CLS / EOS states, DINO's final-norm CLS state.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anchoredit_jax import layers

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_ACTS = {"quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
         "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


class FeatureNetError(ValueError):
    """A feature-network folder cannot be used; the message names the folder and the problem."""


# ----------------------------------------------------------------------------- configs
@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """One pre-LN transformer tower (CLIP vision or text, or a ViT). Frozen: a static jit argument."""

    kind: str  # "clip_vision" | "clip_text" | "vit"
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    act: str
    projection_dim: int = 0  # CLIP towers: the joint embedding size
    image_size: int = 0
    patch_size: int = 0
    vocab_size: int = 0
    max_positions: int = 0
    eos_token_id: int = 2


def _tower(kind: str, d: Mapping, projection_dim: int = 0) -> TowerConfig:
    act = d.get("hidden_act", "quick_gelu" if kind.startswith("clip") else "gelu")
    if act not in _ACTS:
        raise FeatureNetError(f"hidden_act {act!r} is not supported (only {sorted(_ACTS)})")
    return TowerConfig(kind, d["hidden_size"], d["num_hidden_layers"], d["num_attention_heads"], d["intermediate_size"],
                       d.get("layer_norm_eps", 1e-5), act, projection_dim, d.get("image_size", 0),
                       d.get("patch_size", 0), d.get("vocab_size", 0), d.get("max_position_embeddings", 0),
                       d.get("eos_token_id", 2))


# ----------------------------------------------------------------------------- model
class Block(layers.StoredParams, nn.Module):
    """Pre-LN transformer block: x += Attn(LN(x)); x += MLP(LN(x)) (CLIP and ViT alike)."""

    c: TowerConfig

    @nn.compact
    def __call__(self, x: jax.Array, causal: bool = False) -> jax.Array:
        """x: [n, L, D] -> [n, L, D]."""
        n, L, D = x.shape
        h = layers.LayerNorm(epsilon=self.c.layer_norm_eps, name="ln1")(x)
        q, k, v = (layers.Dense(D, name=nm)(h).reshape(n, L, self.c.num_heads, -1) for nm in ("q", "k", "v"))
        a = jax.nn.dot_product_attention(q, k, v, is_causal=causal).reshape(n, L, D)
        x = x + layers.Dense(D, name="out")(a)
        h = layers.LayerNorm(epsilon=self.c.layer_norm_eps, name="ln2")(x)
        return x + layers.Dense(D, name="fc2")(_ACTS[self.c.act](layers.Dense(self.c.intermediate_size, name="fc1")(h)))


class VisionTower(layers.StoredParams, nn.Module):
    """CLIP vision tower (-> projected CLS, [n, projection_dim]) or ViT/DINO (-> final-norm CLS, [n, D])."""

    c: TowerConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        """pixels: [n, S, S, 3], normalised, S = image_size."""
        c, clip = self.c, self.c.kind == "clip_vision"
        chex.assert_shape(pixels, (None, c.image_size, c.image_size, 3))
        p = c.patch_size
        x = layers.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=not clip, name="patch")(pixels)
        n, g = x.shape[0], x.shape[1]
        cls = self.param("cls", nn.initializers.normal(0.02), (c.hidden_size,))
        pos = self.param("pos", nn.initializers.normal(0.02), (g * g + 1, c.hidden_size))
        x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, c.hidden_size)), x.reshape(n, g * g, -1)], axis=1) + pos
        if clip:
            x = layers.LayerNorm(epsilon=c.layer_norm_eps, name="pre_ln")(x)
        for i in range(c.num_layers):
            x = Block(c, name=f"block_{i}")(x)
        if not clip:
            return layers.LayerNorm(epsilon=c.layer_norm_eps, name="final_ln")(x)[:, 0]
        cls_out = layers.LayerNorm(epsilon=c.layer_norm_eps, name="post_ln")(x[:, 0])
        return layers.Dense(c.projection_dim, use_bias=False, name="proj")(cls_out)


class TextTower(layers.StoredParams, nn.Module):
    """CLIP text tower: ids [n, L] int32 -> projected EOS state [n, projection_dim] (causal attention,
    so padding after EOS cannot change it)."""

    c: TowerConfig

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        c = self.c
        n, L = ids.shape
        x = layers.Embed(c.vocab_size, c.hidden_size, name="tokens")(ids)
        x = x + self.param("pos", nn.initializers.normal(0.02), (c.max_positions, c.hidden_size))[:L]
        for i in range(c.num_layers):
            x = Block(c, name=f"block_{i}")(x, causal=True)
        x = layers.LayerNorm(epsilon=c.layer_norm_eps, name="final_ln")(x)
        # transformers: old configs (eos_token_id 2) pool at the largest id, which is EOS in CLIP's
        # vocabulary; newer ones at the first EOS.
        eos = jnp.argmax(ids, -1) if c.eos_token_id == 2 else jnp.argmax(ids == c.eos_token_id, -1)
        return layers.Dense(c.projection_dim, use_bias=False, name="proj")(x[jnp.arange(n), eos])


# ----------------------------------------------------------------------------- weights
# HF tensor name (regex over the name without its tower prefix) -> our path; "T": torch Linear
# [out, in] -> Dense [in, out]; "C": Conv [out, in, kh, kw] -> [kh, kw, in, out].
_BLOCK = [(r"proj\.weight", "proj/weight"),  # CLIP's visual_/text_projection, renamed by load_clip
          (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"block_\1/\2/\3"),
          (r"encoder\.layers\.(\d+)\.layer_norm(1|2)\.(weight|bias)", r"block_\1/ln\2/\3"),
          (r"encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"block_\1/\2/\3")]
_RULES = {
    "clip_vision": _BLOCK + [(r"embeddings\.class_embedding", "cls"),
                             (r"embeddings\.patch_embedding\.weight", "patch/weight"),
                             (r"embeddings\.position_embedding\.weight", "pos"),
                             (r"pre_layrnorm\.(weight|bias)", r"pre_ln/\1"),
                             (r"post_layernorm\.(weight|bias)", r"post_ln/\1")],
    "clip_text": _BLOCK + [(r"embeddings\.token_embedding\.weight", "tokens/embedding"),
                           (r"embeddings\.position_embedding\.weight", "pos"),
                           (r"final_layer_norm\.(weight|bias)", r"final_ln/\1")],
    # transformers >= 5 names (layers.N.attention.q_proj ...) and the hub's older ones (encoder.layer.N...).
    "vit": [(r"(?:layers|encoder\.layer)\.(\d+)\.attention\.(?:attention\.)?(q|k|v)(?:_proj|uery|ey|alue)"
             r"\.(weight|bias)", r"block_\1/\2/\3"),
            (r"(?:layers\.(\d+)\.attention\.o_proj|encoder\.layer\.(\d+)\.attention\.output\.dense)\.(weight|bias)",
             r"block_\1\2/out/\3"),
            (r"(?:layers\.(\d+)\.mlp\.fc1|encoder\.layer\.(\d+)\.intermediate\.dense)\.(weight|bias)",
             r"block_\1\2/fc1/\3"),
            (r"(?:layers\.(\d+)\.mlp\.fc2|encoder\.layer\.(\d+)\.output\.dense)\.(weight|bias)", r"block_\1\2/fc2/\3"),
            (r"(?:layers|encoder\.layer)\.(\d+)\.layernorm_before\.(weight|bias)", r"block_\1/ln1/\2"),
            (r"(?:layers|encoder\.layer)\.(\d+)\.layernorm_after\.(weight|bias)", r"block_\1/ln2/\2"),
            (r"embeddings\.cls_token", "cls"), (r"embeddings\.position_embeddings", "pos"),
            (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch/\1"),
            (r"layernorm\.(weight|bias)", r"final_ln/\1")],
}
_IGNORED = re.compile(r"(.*position_ids|logit_scale|pooler\..*|embeddings\.mask_token)$")


def convert_tower(sd: Mapping[str, np.ndarray], c: TowerConfig, where: str) -> dict:
    """HF tensors of one tower (names without the tower prefix) -> Flax variables, checked against init."""
    tree: dict = {}
    for name, a in sd.items():
        for pat, repl in _RULES[c.kind]:
            if re.fullmatch(pat, name):
                path = re.sub(pat, repl, name).split("/")
                break
        else:
            if _IGNORED.fullmatch(name):
                continue
            raise FeatureNetError(f"{where}: unexpected tensor {name!r} for a {c.kind} tower")
        a = np.asarray(a, np.float32)
        leaf = {"weight": "kernel" if a.ndim > 1 else "scale"}.get(path[-1], path[-1])  # 1-D weights: LayerNorm
        if a.ndim == 4:
            a = a.transpose(2, 3, 1, 0)
        elif leaf == "kernel":
            a = a.T
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[leaf] = a
    if c.kind == "vit":  # the hub's ViT stores cls [1, 1, D] and pos [1, N, D]
        for k in ("cls", "pos"):
            if k in tree:
                tree[k] = tree[k].reshape((-1,) if k == "cls" else (-1, tree[k].shape[-1]))
    _check(tree, c, where)
    return {"params": jax.tree.map(jnp.asarray, tree)}


def _abstract(c: TowerConfig) -> dict:
    x = (jnp.zeros((1, 2), jnp.int32) if c.kind == "clip_text" else jnp.zeros((1, c.image_size, c.image_size, 3)))
    module = TextTower(c) if c.kind == "clip_text" else VisionTower(c)
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]


def _check(tree: dict, c: TowerConfig, where: str) -> None:
    flat = lambda t: {"/".join(str(getattr(k, "key", k)) for k in kp): v.shape  # noqa: E731
                      for kp, v in jax.tree_util.tree_leaves_with_path(t)}
    ref, got = flat(_abstract(c)), flat(tree)
    for path in sorted(set(ref) | set(got)):
        if path not in got:
            raise FeatureNetError(f"{where}: the checkpoint lacks {c.kind} parameter {path}")
        if path not in ref:
            raise FeatureNetError(f"{where}: the checkpoint has unexpected {c.kind} parameter {path}")
        if tuple(got[path]) != tuple(ref[path]):
            raise FeatureNetError(f"{where}: {c.kind} parameter {path} has shape {tuple(got[path])}, "
                                  f"config.json says {tuple(ref[path])}")


# ----------------------------------------------------------------------------- loading
def _read_folder(path: str | Path) -> tuple[dict, dict[str, np.ndarray], dict]:
    from safetensors.numpy import load_file  # numpy API: no torch

    path = Path(path)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise FeatureNetError(f"{path}: no {f.name} (a HuggingFace folder as save_pretrained writes it; "
                                  ".bin/pytorch weights are not read)")
    try:
        config, sd = json.loads(cfg_file.read_text()), load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - json and safetensors raise many types
        raise FeatureNetError(f"{path}: cannot read config.json/model.safetensors ({type(e).__name__}: {e})") from None
    pre = path / "preprocessor_config.json"
    return config, sd, json.loads(pre.read_text()) if pre.is_file() else {}


def _preprocess(images: jax.Array, size: int, mean, std) -> jax.Array:
    """[n, H, W, 3] in [-1, 1] -> [n, size, size, 3] normalised for the network."""
    x = (images.astype(jnp.float32) + 1.0) * 0.5
    x = jnp.clip(jax.image.resize(x, (x.shape[0], size, size, 3), "bicubic"), 0.0, 1.0)
    return (x - jnp.asarray(mean)) / jnp.asarray(std)


def _normalise(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclasses.dataclass
class ImageEmbedder:
    """A frozen vision tower with its input size and normalisation; `image` is pure and jittable."""

    name: str
    tower: TowerConfig
    variables: dict
    mean: tuple
    std: tuple

    def apply(self, variables: dict, images: jax.Array) -> jax.Array:
        """[n, H, W, 3] in [-1, 1] -> L2-normalised embeddings [n, D], with the weights given (under a
        jit, pass them as an argument so that they are not baked into the program as constants)."""
        return _encode_images(self.tower, self.mean, self.std, variables, images)

    def image(self, images: jax.Array) -> jax.Array:
        """`apply` with this embedder's own weights."""
        return self.apply(self.variables, images)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))  # op by op, every primitive of the tower is a program
def _encode_images(c: TowerConfig, mean: tuple, std: tuple, variables: dict, images: jax.Array) -> jax.Array:
    return _normalise(VisionTower(c).apply(variables, _preprocess(images, c.image_size, mean, std)))


@dataclasses.dataclass
class Clip(ImageEmbedder):
    """CLIP: `image` as ImageEmbedder, plus `text` for captions (CLIP-T)."""

    text_tower: TowerConfig = None
    text_variables: dict = None
    tokenize: Callable = None  # list[str] -> ids [n, L] int32

    def text(self, texts: Sequence[str]) -> jax.Array:
        """Strings -> L2-normalised embeddings [n, D] (host side: tokenises, then one jitted call)."""
        if not texts:
            return jnp.zeros((0, self.tower.projection_dim))
        return _encode_text(self.text_tower, self.text_variables, jnp.asarray(self.tokenize(list(texts))))


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(c: TowerConfig, variables: dict, ids: jax.Array) -> jax.Array:
    return _normalise(TextTower(c).apply(variables, ids))


def _stats(pre: dict, mean, std) -> tuple[tuple, tuple]:
    """mean/std from preprocessor_config.json where it gives them, else the family's."""
    m, s = pre.get("image_mean", mean), pre.get("image_std", std)
    return tuple(float(v) for v in m), tuple(float(v) for v in s)


def _clip_tokenizer(path: Path, length: int) -> Callable:
    """The folder's tokenizer.json (the `tokenizers` library: transformers' AutoTokenizer would import
    torch) -> list[str] -> ids [n, length] int32, BOS ... EOS, truncated and padded with EOS as
    transformers' CLIP tokenizer does."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001 - missing file or bad JSON; one line for the user
        raise FeatureNetError(f"{path}: cannot load the CLIP tokenizer from tokenizer.json "
                              f"({type(e).__name__}: {e})") from None
    eos = tok.token_to_id("<|endoftext|>")
    if eos is None:
        raise FeatureNetError(f"{path}: tokenizer.json has no <|endoftext|> token: not a CLIP tokenizer")
    tok.enable_truncation(length)
    tok.enable_padding(length=length, pad_id=eos, pad_token="<|endoftext|>")
    return lambda texts: np.array([e.ids for e in tok.encode_batch(list(texts))], np.int32)


def load_clip(path: str | Path) -> Clip:
    """A HF CLIPModel folder (config.json, model.safetensors, tokenizer files) -> Clip."""
    config, sd, pre = _read_folder(path)
    if config.get("model_type") != "clip":
        raise FeatureNetError(f"{path}: config.json model_type is {config.get('model_type')!r}, expected 'clip' "
                              "(a CLIPModel folder, e.g. openai/clip-vit-base-patch32)")
    proj = config.get("projection_dim", 512)
    vis, txt = _tower("clip_vision", config["vision_config"], proj), _tower("clip_text", config["text_config"], proj)
    towers = {}
    for c, prefix, proj_name in ((vis, "vision_model.", "visual_projection.weight"),
                                 (txt, "text_model.", "text_projection.weight")):
        part = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
        if proj_name not in sd:
            raise FeatureNetError(f"{path}: model.safetensors lacks {proj_name}")
        towers[c.kind] = convert_tower(dict(part, **{"proj.weight": sd[proj_name]}), c, str(path))
    tokenize = _clip_tokenizer(Path(path), txt.max_positions)
    mean, std = _stats(pre, CLIP_MEAN, CLIP_STD)
    return Clip("clip", vis, towers["clip_vision"], mean, std, txt, towers["clip_text"], tokenize)


def load_dino(path: str | Path) -> ImageEmbedder:
    """A HF ViTModel folder (DINO: facebook/dino-vits16, -vitb16, ...) -> ImageEmbedder."""
    config, sd, pre = _read_folder(path)
    if config.get("model_type") != "vit":
        raise FeatureNetError(f"{path}: config.json model_type is {config.get('model_type')!r}, expected 'vit' "
                              "(a ViTModel folder such as facebook/dino-vits16; DINOv2 is not ported)")
    c = _tower("vit", config)
    if not config.get("qkv_bias", True):
        raise FeatureNetError(f"{path}: qkv_bias=False ViTs are not supported")
    variables = convert_tower({k.removeprefix("vit."): v for k, v in sd.items()}, c, str(path))
    mean, std = _stats(pre, IMAGENET_MEAN, IMAGENET_STD)
    return ImageEmbedder("dino", c, variables, mean, std)

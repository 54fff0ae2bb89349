"""Wan2.1 VAE, single-image path, in Flax (linen), plus a loader for diffusers' `AutoencoderKLWan`.

AnchorEdit encodes every turn as ONE latent frame, so only the first-frame path of Wan's causal
video VAE is ever run. On one frame that VAE is an ordinary 2-D conv VAE:

* a causal 3-D conv pads 2*p frames of zeros BEFORE the frame, so only the kernel's last temporal
  slice ever touches data: conv3d(weight[O, I, T, H, W]) == conv2d(weight[:, :, -1]).
* `WanResample`'s `time_conv` (temporal down/up-sampling) is skipped on the first chunk in
  diffusers (the feature cache is still empty / marked "Rep"), so `downsample3d == downsample2d`
  and `upsample3d == upsample2d` on one frame. Their weights are in the file but unused here.
* attention blocks are per frame (2-D, one head), RMS norms normalise over channels.
* decode clamps to [-1, 1]; encode splits `quant_conv`'s output into (mean, logvar), logvar
  clamped to [-30, 20] as in `DiagonalGaussianDistribution`.

Layout is channels-last: images [B, H, W, C] in [-1, 1] <-> latents [B, H/8, W/8, z_dim] (for
Wan's 4-level `dim_mult`). Wan2.2's residual/patchified variant is refused.

Module names mirror diffusers' state-dict keys ("down_blocks_3" <-> "down_blocks.3"), so the key
table below is one naming rule plus one transform per leaf kind.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anchoredit_jax import layers

Array = jax.Array
Dtype = Any

# Wan2.1's published per-channel latent statistics (diffusers' AutoencoderKLWan defaults).
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of a Wan2.1 VAE (the fields of diffusers' `AutoencoderKLWan` that matter).

    Frozen and made of tuples so it is hashable and can be a linen attribute.
    """
    base_dim: int = 96
    decoder_base_dim: Optional[int] = None  # None -> base_dim (as in diffusers)
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    # Unused on one frame, kept so a config round-trips to diffusers.
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    in_channels: int = 3
    out_channels: int = 3
    latents_mean: Optional[tuple[float, ...]] = WAN21_LATENTS_MEAN
    latents_std: Optional[tuple[float, ...]] = WAN21_LATENTS_STD

    def __post_init__(self):
        for f in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            v = getattr(self, f)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, f, tuple(v))
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temperal_downsample needs len(dim_mult)-1 = {len(self.dim_mult) - 1} "
                             f"entries, got {self.temperal_downsample}")
        for name in ("latents_mean", "latents_std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.z_dim:
                raise ValueError(f"{name} has {len(v)} entries but z_dim is {self.z_dim}")

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    # diffusers config.json fields: accepted / accepted-but-irrelevant-on-one-frame / refused.
    _IGNORED = ("_class_name", "_diffusers_version", "_name_or_path", "scale_factor_temporal",
                "scale_factor_spatial", "dropout")

    @classmethod
    def from_diffusers(cls, cfg: dict) -> "WanVAEConfig":
        """Builds a config from diffusers' `config.json` dict; refuses what this port lacks."""
        cfg = dict(cfg)
        cls_name = cfg.get("_class_name", "AutoencoderKLWan")
        if cls_name != "AutoencoderKLWan":
            raise ValueError(f"expected an AutoencoderKLWan config, got _class_name={cls_name!r}")
        if cfg.pop("is_residual", False):
            raise NotImplementedError("is_residual=True is the Wan2.2 VAE (residual down/up blocks "
                                      "with avg-shortcut/dup-up); only the Wan2.1 VAE is supported")
        if cfg.pop("patch_size", None) is not None:
            raise NotImplementedError("patch_size is the Wan2.2 VAE's patchified input; only the "
                                      "Wan2.1 VAE (patch_size=None) is supported")
        for k in cls._IGNORED:
            cfg.pop(k, None)  # dropout: identity at inference; scale factors: tiling only
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise NotImplementedError(f"unsupported AutoencoderKLWan config fields: {unknown}")
        return cls(**cfg)

    def to_diffusers(self) -> dict:
        """The kwargs of diffusers' `AutoencoderKLWan(**kwargs)` for this architecture."""
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
def _conv(features: int, kernel: int, name: str, dtype: Dtype, stride: int = 1,
          padding: Any = None) -> layers.Conv:
    """2-D conv standing in for a causal 3-D conv on one frame (symmetric spatial padding)."""
    if padding is None:
        padding = ((kernel // 2, kernel // 2),) * 2
    return layers.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                       dtype=dtype, param_dtype=jnp.float32, name=name)


class RMSNorm(layers.StoredParams, nn.Module):
    """WanRMS_norm: x / max(||x||_2, 1e-12) * sqrt(C) * gamma over the channel axis, in fp32."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.ones, (c,), jnp.float32)
        xf = x.astype(jnp.float32)
        # rsqrt(max(sum x^2, eps^2)) == 1/max(||x||, eps) but has a finite gradient at x = 0.
        inv = jax.lax.rsqrt(jnp.maximum(jnp.sum(xf * xf, axis=-1, keepdims=True), 1e-24))
        return (xf * inv * (c ** 0.5) * gamma).astype(x.dtype)


class ResidualBlock(nn.Module):
    """WanResidualBlock: [RMSNorm, SiLU, conv3x3] x 2 plus a (1x1 conv) shortcut. [B,H,W,Ci]->[...,Co]."""
    out_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = x
        if x.shape[-1] != self.out_dim:
            h = _conv(self.out_dim, 1, "conv_shortcut", self.dtype)(x)
        x = nn.silu(RMSNorm(name="norm1")(x))
        x = _conv(self.out_dim, 3, "conv1", self.dtype)(x)
        x = nn.silu(RMSNorm(name="norm2")(x))  # dropout (0.0 in Wan2.1) omitted
        x = _conv(self.out_dim, 3, "conv2", self.dtype)(x)
        return x + h


class AttentionBlock(nn.Module):
    """WanAttentionBlock: single-head self-attention over the H*W positions of one frame."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hh, ww, c = x.shape
        identity = x
        x = RMSNorm(name="norm")(x)
        qkv = _conv(3 * c, 1, "to_qkv", self.dtype)(x).reshape(b, hh * ww, 1, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)  # torch chunks the channel axis in q, k, v order
        # XLA path on CPU; the backend choice is jax's (no mask, default 1/sqrt(c) scale).
        out = jax.nn.dot_product_attention(q, k, v).reshape(b, hh, ww, c)
        return _conv(c, 1, "proj", self.dtype)(out) + identity


class Resample(nn.Module):
    """WanResample on one frame: 'down' = pad (0,1) right/bottom + 3x3 stride-2 conv; 'up' =
    nearest x2 (== nearest-exact for factor 2) + 3x3 conv to `out_dim`. `time_conv` unused."""
    mode: str  # "down" | "up"
    out_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.mode == "down":
            return _conv(self.out_dim, 3, "resample_1", self.dtype, stride=2,
                         padding=((0, 1), (0, 1)))(x)
        if self.mode == "up":
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            return _conv(self.out_dim, 3, "resample_1", self.dtype)(x)
        raise ValueError(f"unknown resample mode {self.mode!r}")


class MidBlock(nn.Module):
    """WanMidBlock: resnet, attention, resnet at constant width."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        x = ResidualBlock(c, self.dtype, name="resnets_0")(x)
        x = AttentionBlock(self.dtype, name="attentions_0")(x)
        return ResidualBlock(c, self.dtype, name="resnets_1")(x)


class Encoder(nn.Module):
    """WanEncoder3d on one frame: [B, H, W, in] -> [B, H/2^(L-1), W/2^(L-1), 2*z_dim]."""
    config: WanVAEConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dims = [cfg.base_dim * u for u in (1,) + cfg.dim_mult]
        x = _conv(dims[0], 3, "conv_in", self.dtype)(x)
        # 1. down blocks: one flat list, numbered as diffusers' `down_blocks` ModuleList.
        idx, scale = 0, 1.0
        for i, out_dim in enumerate(dims[1:]):
            for _ in range(cfg.num_res_blocks):
                x = ResidualBlock(out_dim, self.dtype, name=f"down_blocks_{idx}")(x)
                idx += 1
                if scale in cfg.attn_scales:
                    x = AttentionBlock(self.dtype, name=f"down_blocks_{idx}")(x)
                    idx += 1
            if i != len(cfg.dim_mult) - 1:
                x = Resample("down", out_dim, self.dtype, name=f"down_blocks_{idx}")(x)
                idx += 1
                scale /= 2.0
        # 2. middle, 3. head
        x = MidBlock(self.dtype, name="mid_block")(x)
        x = nn.silu(RMSNorm(name="norm_out")(x))
        return _conv(2 * cfg.z_dim, 3, "conv_out", self.dtype)(x)


class UpBlock(nn.Module):
    """WanUpBlock: (num_res_blocks + 1) resnets, then an optional x2 upsample halving channels."""
    out_dim: int
    num_res_blocks: int
    upsample: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for j in range(self.num_res_blocks + 1):
            x = ResidualBlock(self.out_dim, self.dtype, name=f"resnets_{j}")(x)
        if self.upsample:
            x = Resample("up", self.out_dim // 2, self.dtype, name="upsamplers_0")(x)
        return x


class Decoder(nn.Module):
    """WanDecoder3d on one frame: [B, h, w, z_dim] -> [B, h*2^(L-1), w*2^(L-1), out] (unclamped).

    Like diffusers (and unlike the original Wan code) the decoder has no attention in up blocks.
    """
    config: WanVAEConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: Array) -> Array:
        cfg = self.config
        base = cfg.decoder_base_dim or cfg.base_dim
        dims = [base * u for u in (cfg.dim_mult[-1],) + cfg.dim_mult[::-1]]
        x = _conv(dims[0], 3, "conv_in", self.dtype)(z)
        x = MidBlock(self.dtype, name="mid_block")(x)
        n = len(cfg.dim_mult)
        for i, out_dim in enumerate(dims[1:]):
            # Wan2.1's upsamplers halve channels, hence block i>0 receives dims[i] // 2.
            x = UpBlock(out_dim, cfg.num_res_blocks, upsample=i != n - 1, dtype=self.dtype,
                        name=f"up_blocks_{i}")(x)
        x = nn.silu(RMSNorm(name="norm_out")(x))
        return _conv(cfg.out_channels, 3, "conv_out", self.dtype)(x)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
class WanVAE(nn.Module):
    """Single-frame Wan2.1 VAE.

    encode: images [B, H, W, in_channels] in [-1, 1] -> (mean, logvar), each [B, H/s, W/s, z_dim]
    decode: latents [B, H/s, W/s, z_dim] -> images [B, H, W, out_channels], clamped to [-1, 1]
    with s = config.spatial_compression (8 for Wan). Params are fp32; `dtype` is compute dtype.
    """
    config: WanVAEConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        z = self.config.z_dim
        self.encoder = Encoder(self.config, self.dtype)
        self.quant_conv = _conv(2 * z, 1, "quant_conv", self.dtype)
        self.post_quant_conv = _conv(z, 1, "post_quant_conv", self.dtype)
        self.decoder = Decoder(self.config, self.dtype)

    def _check_spatial(self, x: Array, factor: int):
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"spatial size {x.shape[1:3]} must be divisible by {factor}")

    def encode(self, x: Array) -> tuple[Array, Array]:
        chex.assert_rank(x, 4)
        chex.assert_axis_dimension(x, -1, self.config.in_channels)
        self._check_spatial(x, self.config.spatial_compression)
        h = self.quant_conv(self.encoder(x.astype(self.dtype)))
        mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: Array, clamp: bool = True) -> Array:
        """`clamp=False` gives the raw output (training: keeps gradients outside [-1, 1])."""
        chex.assert_rank(z, 4)
        chex.assert_axis_dimension(z, -1, self.config.z_dim)
        x = self.decoder(self.post_quant_conv(z.astype(self.dtype))).astype(jnp.float32)
        return jnp.clip(x, -1.0, 1.0) if clamp else x

    def __call__(self, x: Array, rng: Optional[Array] = None, clamp: bool = True):
        """Reconstruction: x -> (recon, mean, logvar); samples z ~ N(mean, var) when rng given."""
        mean, logvar = self.encode(x)
        z = mean
        if rng is not None:
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
        return self.decode(z, clamp=clamp), mean, logvar


def param_shapes(config: WanVAEConfig) -> dict:
    """`{'params': ShapeDtypeStruct tree}` of `WanVAE(config)` (traced, nothing computed)."""
    s = config.spatial_compression  # smallest valid image; param shapes do not depend on it
    x = jax.ShapeDtypeStruct((1, s, s, config.in_channels), jnp.float32)
    return jax.eval_shape(WanVAE(config).init, jax.random.PRNGKey(0), x)


def init_params(config: WanVAEConfig, seed: int = 0) -> dict:
    """Random fp32 params `{'params': ...}` for `WanVAE(config)` (any compute dtype).

    LeCun-uniform kernels (variance 1/fan_in, as flax's default lecun_normal), zero biases, unit
    gammas, drawn on the host with numpy: `model.init` works too, but XLA:CPU spends ~1 s
    compiling each random initialiser, which dominates small runs and tests.
    """
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes(config)["params"])[0]:
        names = tuple(p.key for p in path)
        if names[-1] == "kernel":
            kh, kw, cin, _ = leaf.shape
            bound = np.sqrt(3.0 / (kh * kw * cin))
            flat[names] = jnp.asarray(rng.uniform(-bound, bound, leaf.shape), jnp.float32)
        else:  # bias 0, gamma 1
            flat[names] = jnp.full(leaf.shape, 1.0 if names[-1] == "gamma" else 0.0, jnp.float32)
    return {"params": _unflatten(flat)}


def normalize_latents(z: Array, mean: Any, std: Any) -> Array:
    """Per-channel (z - mean) / std on the last axis (what the DiT sees)."""
    return (z - jnp.asarray(mean, z.dtype)) / jnp.asarray(std, z.dtype)


def denormalize_latents(z: Array, mean: Any, std: Any) -> Array:
    """Inverse of `normalize_latents`."""
    return z * jnp.asarray(std, z.dtype) + jnp.asarray(mean, z.dtype)


# ----------------------------------------------------------------------------------------------
# diffusers key table
# ----------------------------------------------------------------------------------------------
def _conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch conv weight [O, I, (T,) H, W] -> flax [H, W, I, O]; a causal 3-D kernel keeps T=-1."""
    if w.ndim == 5:
        w = w[:, :, -1]
    return np.transpose(w, (2, 3, 1, 0))


# flax leaf name -> (diffusers leaf name, torch -> flax transform)
LEAF_TABLE = {
    "kernel": ("weight", _conv_kernel),
    "bias": ("bias", lambda b: b),
    "gamma": ("gamma", lambda g: g.reshape(-1)),  # torch stores [C, 1, 1(, 1)]
}
# diffusers tensors that one frame never touches (temporal resampling convs).
UNUSED_ON_ONE_FRAME = (re.compile(r"\.time_conv\.(weight|bias)$"),)


def diffusers_key(flax_path: Sequence[str]) -> str:
    """('encoder', 'down_blocks_3', 'conv1', 'kernel') -> 'encoder.down_blocks.3.conv1.weight'."""
    *mods, leaf = flax_path
    return ".".join([re.sub(r"_(\d+)$", r".\1", m) for m in mods] + [LEAF_TABLE[leaf][0]])


def convert_diffusers_state_dict(state: dict, config: WanVAEConfig) -> dict:
    """diffusers state dict (numpy) -> flax `{'params': ...}`, checked against `eval_shape(init)`.

    Raises naming the first missing, mis-shaped or unexpected tensor.
    """
    expected = param_shapes(config)
    flat = {}
    used = set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(expected["params"])[0]:
        names = tuple(p.key for p in path)
        key = diffusers_key(names)
        if key not in state:
            raise KeyError(f"tensor {key!r} (flax {'/'.join(names)}) missing from the checkpoint")
        arr = LEAF_TABLE[names[-1]][1](np.asarray(state[key]))
        if arr.shape != leaf.shape:
            raise ValueError(f"shape mismatch for tensor {key!r}: checkpoint {tuple(state[key].shape)}"
                             f" -> {arr.shape}, model expects {leaf.shape} (flax {'/'.join(names)})")
        flat[names] = jnp.asarray(arr, jnp.float32)
        used.add(key)
    extra = sorted(k for k in state if k not in used
                   and not any(p.search(k) for p in UNUSED_ON_ONE_FRAME))
    if extra:
        raise ValueError(f"unexpected tensors in the checkpoint (config mismatch?): {extra[:5]}"
                         + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))
    return {"params": _unflatten(flat)}


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for names, v in flat.items():
        d = out
        for n in names[:-1]:
            d = d.setdefault(n, {})
        d[names[-1]] = v
    return out


def load_diffusers_vae(path: str) -> tuple[WanVAEConfig, dict]:
    """Loads a diffusers `AutoencoderKLWan` (folder with config.json + safetensors, or the
    .safetensors file itself next to its config.json) -> (WanVAEConfig, {'params': ...}).

    Pickle checkpoints (.bin/.pt/.ckpt) are refused: unpickling runs arbitrary code and needs torch.
    """
    from anchoredit_jax.interop import read_checkpoint_config, read_safetensors  # one reader of diffusers folders

    path = os.fspath(path)
    config = WanVAEConfig.from_diffusers(read_checkpoint_config(path, "an AutoencoderKLWan config is needed"))
    # host numpy fp32 copies (bf16/fp16 checkpoints are upcast)
    state = {k: np.asarray(v, np.float32) for k, v in read_safetensors(path).items()}
    return config, convert_diffusers_state_dict(state, config)


# JAX -> diffusers: the inverse table. diffusers keeps every conv of the causal video VAE 3-D except
# the per-frame ones below, and its RMS gammas broadcastable over (T,) H, W.
_CONV2D_MODULES = ("resample_1", "to_qkv", "proj")  # nn.Conv2d in diffusers


def diffusers_state_dict(params: dict, config: WanVAEConfig) -> dict:
    """`{'params': ...}` -> the full tensor set of diffusers' `AutoencoderKLWan(**config.to_diffusers())`.

    Inverse of `convert_diffusers_state_dict`: a 2-D kernel goes into the LAST temporal slice of its
    causal 3-D kernel (earlier slices zero, so one frame computes exactly what it computes here).
    The temporal resamplers (`time_conv`), never run on one frame, are written as the identity on the
    newest frame: a video through the exported VAE repeats/drops frames instead of mixing them.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params["params"])[0]:
        names = tuple(p.key for p in path)
        x = np.asarray(leaf, np.float32)
        if names[-1] == "kernel":
            w = np.transpose(x, (3, 2, 0, 1))  # [H, W, I, O] -> [O, I, H, W]
            if names[-2] not in _CONV2D_MODULES:
                w3 = np.zeros(w.shape[:2] + (w.shape[2],) + w.shape[2:], np.float32)  # temporal size = spatial
                w3[:, :, -1] = w
                w = w3
            x = w
        elif names[-1] == "gamma":
            x = x.reshape((-1, 1, 1) if names[-2] == "norm" else (-1, 1, 1, 1))  # attention norm: images=True
        out[diffusers_key(names)] = np.ascontiguousarray(x)
    # temporal resamplers: encoder stage i downsamples in time iff temperal_downsample[i]; the decoder
    # mirrors it (diffusers' temperal_upsample = temperal_downsample[::-1]).
    enc, stage = params["params"]["encoder"], 0
    for name in sorted((k for k in enc if k.startswith("down_blocks_")), key=lambda k: int(k.split("_")[-1])):
        if "resample_1" in enc[name]:
            if config.temperal_downsample[stage]:
                c = enc[name]["resample_1"]["kernel"].shape[2]
                out.update(_time_conv(f"encoder.down_blocks.{name.split('_')[-1]}", c, 1))
            stage += 1
    up = config.temperal_downsample[::-1]
    for i in range(len(config.dim_mult) - 1):
        if up[i]:
            c = params["params"]["decoder"][f"up_blocks_{i}"]["upsamplers_0"]["resample_1"]["kernel"].shape[2]
            out.update(_time_conv(f"decoder.up_blocks.{i}.upsamplers.0", c, 2))
    return out


def _time_conv(prefix: str, c: int, copies: int) -> dict:
    """Identity on the newest frame: weight [copies*c, c, 3, 1, 1], bias 0."""
    w = np.zeros((copies * c, c, 3, 1, 1), np.float32)
    for j in range(copies):
        w[j * c:(j + 1) * c, :, -1, 0, 0] = np.eye(c, dtype=np.float32)
    return {f"{prefix}.time_conv.weight": w, f"{prefix}.time_conv.bias": np.zeros(copies * c, np.float32)}


def save_diffusers_vae(config: WanVAEConfig, params: dict, out_dir: str, *, overwrite: bool = False):
    """Writes a folder that `AutoencoderKLWan.from_pretrained(out_dir)` loads and `load_diffusers_vae`
    reads back bit for bit. config.latents_mean/std are stored (the latent normalisation of the run)."""
    from anchoredit_jax.interop import write_safetensors_folder

    if config.latents_mean is None or config.latents_std is None:
        raise ValueError("the VAE config has no latents_mean/latents_std; set the run's latent statistics "
                         "(dataclasses.replace(config, latents_mean=..., latents_std=...)) before saving")
    cfg = {"_class_name": "AutoencoderKLWan", **config.to_diffusers()}
    write_safetensors_folder(diffusers_state_dict(params, config), out_dir, cfg, overwrite=overwrite)

"""Weights to and from diffusers' `WanTransformer3DModel` (safetensors; the library never imports torch).

One declarative table maps each diffusers tensor to a param path and a transform; the same table
runs in both directions, so a round trip is bit-exact (transposes and reshapes only). Per-block
tensors ("blocks.{i}.…") are stacked along a leading layer axis, as the scanned model keeps them.
Converted trees are checked against `jax.eval_shape(init)`, naming the first mismatching tensor.

    from anchoredit_jax import interop
    model, params = interop.load_diffusers_transformer("path/to/transformer")   # a diffusers folder
    v = model.apply({"params": params}, latents, t, text, text_mask, positions, mode="block_causal")
    interop.save_diffusers_transformer(model.config, params, "out/transformer")  # from_pretrained loads it

The original Wan2.1 naming (`blocks.0.self_attn.q.weight`, `head.head`, ...) is a second, exact
rename table on top of the diffusers names (`original_key`); loading detects it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.flax import save_file

from anchoredit_jax.checkpointing import on_one_device
from anchoredit_jax.model import DiTConfig, WanDiT, abstract_params

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# DiTConfig fields that fix the weights' shapes (the rest is numerics and RoPE numbering).
SHAPE_FIELDS = ("num_layers", "num_heads", "head_dim", "ffn_dim", "in_channels", "out_channels", "text_dim",
                "freq_dim", "patch_size", "cross_attn_norm")
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# (diffusers key, param path, transform). "linear": torch [out, in] <-> flax kernel [in, out].
_TOP = [
    ("patch_embedding.weight", "patch_embedding/kernel", "patch"),
    ("patch_embedding.bias", "patch_embedding/bias", "copy"),
    ("condition_embedder.time_embedder.linear_1.weight", "condition_embedder/time_embedder/linear_1/kernel", "linear"),
    ("condition_embedder.time_embedder.linear_1.bias", "condition_embedder/time_embedder/linear_1/bias", "copy"),
    ("condition_embedder.time_embedder.linear_2.weight", "condition_embedder/time_embedder/linear_2/kernel", "linear"),
    ("condition_embedder.time_embedder.linear_2.bias", "condition_embedder/time_embedder/linear_2/bias", "copy"),
    ("condition_embedder.time_proj.weight", "condition_embedder/time_proj/kernel", "linear"),
    ("condition_embedder.time_proj.bias", "condition_embedder/time_proj/bias", "copy"),
    ("condition_embedder.text_embedder.linear_1.weight", "condition_embedder/text_embedder/linear_1/kernel", "linear"),
    ("condition_embedder.text_embedder.linear_1.bias", "condition_embedder/text_embedder/linear_1/bias", "copy"),
    ("condition_embedder.text_embedder.linear_2.weight", "condition_embedder/text_embedder/linear_2/kernel", "linear"),
    ("condition_embedder.text_embedder.linear_2.bias", "condition_embedder/text_embedder/linear_2/bias", "copy"),
    ("proj_out.weight", "proj_out/kernel", "linear"),
    ("proj_out.bias", "proj_out/bias", "copy"),
    ("scale_shift_table", "scale_shift_table", "table"),
]
_BLOCK = [("scale_shift_table", "scale_shift_table", "table"),
          ("ffn.net.0.proj.weight", "ffn_in/kernel", "linear"), ("ffn.net.0.proj.bias", "ffn_in/bias", "copy"),
          ("ffn.net.2.weight", "ffn_out/kernel", "linear"), ("ffn.net.2.bias", "ffn_out/bias", "copy"),
          ("norm2.weight", "norm2/scale", "copy"), ("norm2.bias", "norm2/bias", "copy")]
for _a in ("attn1", "attn2"):
    for _p in ("to_q", "to_k", "to_v"):
        _BLOCK += [(f"{_a}.{_p}.weight", f"{_a}/{_p}/kernel", "linear"), (f"{_a}.{_p}.bias", f"{_a}/{_p}/bias", "copy")]
    _BLOCK += [(f"{_a}.to_out.0.weight", f"{_a}/to_out/kernel", "linear"),
               (f"{_a}.to_out.0.bias", f"{_a}/to_out/bias", "copy"),
               (f"{_a}.norm_q.weight", f"{_a}/norm_q/scale", "copy"),
               (f"{_a}.norm_k.weight", f"{_a}/norm_k/scale", "copy")]


def key_table(config: DiTConfig) -> list[tuple[str, tuple[str, ...], str, int | None]]:
    """Rows (diffusers key, param path, transform, layer index or None) for this config."""
    rows = [(k, tuple(p.split("/")), t, None) for k, p, t in _TOP]
    for i in range(config.num_layers):
        rows += [(f"blocks.{i}.{k}", ("blocks",) + tuple(p.split("/")), t, i) for k, p, t in _BLOCK
                 if config.cross_attn_norm or not k.startswith("norm2.")]
    return rows


def _to_jax(x: np.ndarray, kind: str, config: DiTConfig) -> np.ndarray:
    if kind == "linear":
        return x.T
    if kind == "patch":  # conv [D, C, pt, ph, pw] -> dense [(pt ph pw C), D], as the model's rearrange
        return x.transpose(2, 3, 4, 1, 0).reshape(-1, x.shape[0])
    if kind == "table":  # [1, n, D] -> [n, D]
        return x[0]
    return x


def _to_torch(x: np.ndarray, kind: str, config: DiTConfig) -> np.ndarray:
    if kind == "linear":
        return x.T
    if kind == "patch":
        pt, ph, pw = config.patch_size
        return x.reshape(pt, ph, pw, config.in_channels, -1).transpose(4, 3, 0, 1, 2)
    if kind == "table":
        return x[None]
    return x


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


# Config ------------------------------------------------------------------------------------------
_UNSUPPORTED = {"image_dim": None, "added_kv_proj_dim": None, "pos_embed_seq_len": None,
                "qk_norm": "rms_norm_across_heads"}


def config_from_diffusers(d: dict, **overrides) -> DiTConfig:
    """diffusers config.json -> DiTConfig (turn_stride etc. from overrides). Refuses I2V/Wan2.2 variants."""
    for key, want in _UNSUPPORTED.items():
        if d.get(key, want) != want:
            raise ValueError(f"diffusers config has {key}={d[key]!r}; only the Wan2.1 text-to-video layout "
                             f"({key}={want!r}) is supported")
    return DiTConfig(num_layers=d["num_layers"], num_heads=d["num_attention_heads"],
                     head_dim=d["attention_head_dim"], ffn_dim=d["ffn_dim"], in_channels=d["in_channels"],
                     out_channels=d.get("out_channels") or d["in_channels"], text_dim=d["text_dim"],
                     freq_dim=d["freq_dim"], patch_size=tuple(d["patch_size"]),
                     cross_attn_norm=d.get("cross_attn_norm", True), eps=d.get("eps", 1e-6),
                     rope_max_seq_len=d.get("rope_max_seq_len", 1024), **overrides).validate()


def config_to_diffusers(c: DiTConfig) -> dict:
    return {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0",
            "patch_size": list(c.patch_size), "num_attention_heads": c.num_heads, "attention_head_dim": c.head_dim,
            "in_channels": c.in_channels, "out_channels": c.out_channels, "text_dim": c.text_dim,
            "freq_dim": c.freq_dim, "ffn_dim": c.ffn_dim, "num_layers": c.num_layers,
            "cross_attn_norm": c.cross_attn_norm, "qk_norm": "rms_norm_across_heads", "eps": c.eps,
            "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": c.rope_max_seq_len,
            "pos_embed_seq_len": None}


# State dicts -------------------------------------------------------------------------------------
def from_state_dict(state: dict[str, np.ndarray], config: DiTConfig, *, dtype=np.float32) -> dict:
    """diffusers tensors (numpy) -> params pytree, checked against the model's abstract shapes."""
    expected = nn.unbox(abstract_params(config))
    rows = key_table(config)
    known = {r[0] for r in rows}
    unexpected = sorted(set(state) - known - {k for k in state if k.endswith("norm_added_q.weight")})
    if unexpected:
        raise ValueError(f"{len(unexpected)} tensors of the checkpoint have no place in this model, "
                         f"first: {unexpected[0]!r}")
    missing = [r[0] for r in rows if r[0] not in state]
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} tensors of this model, first: {missing[0]!r}")
    params: dict[str, Any] = {}
    for key, path, kind, layer in rows:
        x = _to_jax(np.asarray(state[key]), kind, config)
        want = _get(expected, path).shape
        want = want[1:] if layer is not None else want
        if x.shape != tuple(want):
            raise ValueError(f"tensor {key!r} has shape {tuple(state[key].shape)}, which converts to {x.shape}; "
                             f"the config expects {tuple(want)}")
        if layer is None:
            _set(params, path, x.astype(dtype))
        else:
            stacked = _get(params, path) if _has(params, path) else np.zeros((config.num_layers,) + x.shape, dtype)
            stacked[layer] = x
            _set(params, path, stacked)
    return params


def _has(tree, path):
    try:
        _get(tree, path)
        return True
    except KeyError:
        return False


def to_state_dict(params: dict, config: DiTConfig, *, dtype=None) -> dict[str, np.ndarray]:
    """params pytree -> diffusers tensors (numpy, contiguous). dtype None keeps the params' dtype."""
    out = {}
    for key, path, kind, layer in key_table(config):
        x = np.asarray(_get(params, path))
        x = x[layer] if layer is not None else x
        x = np.ascontiguousarray(_to_torch(x, kind, config))
        out[key] = x.astype(dtype) if dtype is not None else x
    return out


# Original Wan2.1 naming (Wan-Video/Wan2.1 `wan/modules/model.py`, Self-Forcing, ComfyUI) ----------
# (diffusers module path, original module path): exact prefixes on dotted boundaries, as in diffusers'
# scripts/convert_wan_to_diffusers.py. Tensor layouts are identical; only names differ. The original
# code calls the cross-attention norm `norm3` and the FFN norm `norm2` (diffusers swaps them).
_ORIGINAL_TOP = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("patch_embedding", "patch_embedding"),
    ("proj_out", "head.head"),
    ("scale_shift_table", "head.modulation"),
]
_ORIGINAL_BLOCK = [("scale_shift_table", "modulation"), ("norm2", "norm3"),
                   ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2")]
for _a, _o in (("attn1", "self_attn"), ("attn2", "cross_attn")):
    _ORIGINAL_BLOCK += [(f"{_a}.to_q", f"{_o}.q"), (f"{_a}.to_k", f"{_o}.k"), (f"{_a}.to_v", f"{_o}.v"),
                        (f"{_a}.to_out.0", f"{_o}.o"), (f"{_a}.norm_q", f"{_o}.norm_q"),
                        (f"{_a}.norm_k", f"{_o}.norm_k")]
# Prefixes other code bases put in front of the model's own keys (checked in this order).
ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")


def _rename(key: str, table) -> str:
    for src, dst in table:
        if key == src or key.startswith(src + "."):
            return dst + key[len(src):]
    raise KeyError(key)


def original_key(diffusers_key: str) -> str:
    """'blocks.3.attn1.to_out.0.weight' -> 'blocks.3.self_attn.o.weight' (and the top-level names)."""
    parts = diffusers_key.split(".", 2)
    if parts[0] == "blocks":
        return f"blocks.{parts[1]}.{_rename(parts[2], _ORIGINAL_BLOCK)}"
    return _rename(diffusers_key, _ORIGINAL_TOP)


def is_original_naming(keys) -> bool:
    """True for a state dict in the original Wan naming (possibly under a prefix)."""
    return any(k.endswith(("head.head.weight", "time_projection.1.weight")) for k in keys)


def from_original_naming(state: dict, config: DiTConfig) -> dict:
    """Original-Wan-named tensors -> diffusers-named tensors for this config (unknown names refused)."""
    keys = list(state)
    for prefix in ORIGINAL_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            state = {k[len(prefix):]: v for k, v in state.items()}
            break
    names = {original_key(row[0]): row[0] for row in key_table(config)}
    unexpected = sorted(k for k in state if k not in names)
    if unexpected:
        raise ValueError(f"{len(unexpected)} tensors of the original-Wan checkpoint have no place in this model, "
                         f"first: {unexpected[0]!r}")
    missing = sorted(k for k in names if k not in state)
    if missing:
        raise ValueError(f"the original-Wan checkpoint lacks {len(missing)} tensors of this model, "
                         f"first: {missing[0]!r}")
    return {names[k]: v for k, v in state.items()}


def to_original_naming(state: dict) -> dict:
    """diffusers-named tensors -> original Wan names (same arrays)."""
    return {original_key(k): v for k, v in state.items()}


def config_from_wan_original(d: dict, **overrides) -> DiTConfig:
    """The original Wan2.1 `config.json` (dim, num_heads, in_dim, ...) -> DiTConfig. T2V only."""
    if d.get("model_type", "t2v") != "t2v":
        raise ValueError(f"original Wan config has model_type={d['model_type']!r}; only 't2v' is supported")
    if d["dim"] % d["num_heads"]:
        raise ValueError(f"original Wan config: dim {d['dim']} is not divisible by num_heads {d['num_heads']}")
    return DiTConfig(num_layers=d["num_layers"], num_heads=d["num_heads"], head_dim=d["dim"] // d["num_heads"],
                     ffn_dim=d["ffn_dim"], in_channels=d.get("in_dim", 16), out_channels=d.get("out_dim", 16),
                     text_dim=d.get("text_dim", 4096), freq_dim=d.get("freq_dim", 256),
                     patch_size=tuple(d.get("patch_size", (1, 2, 2))), cross_attn_norm=d.get("cross_attn_norm", True),
                     eps=d.get("eps", 1e-6), **overrides).validate()


def config_to_wan_original(c: DiTConfig) -> dict:
    return {"_class_name": "WanModel", "model_type": "t2v", "patch_size": list(c.patch_size), "dim": c.dim,
            "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim, "in_dim": c.in_channels, "out_dim": c.out_channels,
            "text_dim": c.text_dim, "num_heads": c.num_heads, "num_layers": c.num_layers,
            "cross_attn_norm": c.cross_attn_norm, "qk_norm": True, "eps": c.eps, "text_len": 512}


def save_wan_original(config: DiTConfig, params: dict, out_dir: str, *, dtype=None,
                      max_shard_bytes: int = 5 * 2**30, overwrite: bool = False):
    """Writes config.json + safetensors in the original Wan2.1 layout (as the Wan-Video release ships)."""
    write_safetensors_folder(to_original_naming(to_state_dict(params, config, dtype=dtype)), out_dir,
                             config_to_wan_original(config), max_shard_bytes=max_shard_bytes, overwrite=overwrite)


# Folders -----------------------------------------------------------------------------------------
def refuse_pickles(path: str):
    """A pickle file, or a folder holding only pickle weights, is refused with a clear message."""
    if os.path.isdir(path):
        names = os.listdir(path)
        if not any(n.endswith(".safetensors") or n == INDEX_NAME for n in names):
            pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
            if pickles:
                raise ValueError(f"{path} holds only pickle weights ({pickles[0]}); pickles can run code on load "
                                 "and are refused. Re-save it as safetensors (e.g. `save_pretrained(..., "
                                 "safe_serialization=True)`).")
            raise FileNotFoundError(f"{path} has no {WEIGHTS_NAME} or {INDEX_NAME}")
    elif path.endswith(PICKLE_SUFFIXES):
        raise ValueError(f"{path} is a pickle file; pickles can run code on load and are refused. "
                         "Convert it to safetensors first.")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file, a sharded index, or a diffusers folder -> numpy (bf16 kept)."""
    refuse_pickles(path)
    if os.path.isdir(path):
        index = os.path.join(path, INDEX_NAME)
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            files = [os.path.join(path, n) for n in files]
        else:
            files = [os.path.join(path, WEIGHTS_NAME)]
    else:
        files = [path]
    state = {}
    for fn in files:
        with safe_open(fn, framework="flax") as f:  # "flax" reads bfloat16, numpy's API does not
            for k in f.keys():
                state[k] = np.asarray(f.get_tensor(k))
    return state


def read_checkpoint_config(path: str, what: str) -> dict:
    """The config.json of a checkpoint folder, or beside a single .safetensors file; pickles refused.

    what: what the config must be, for the error when there is none.
    """
    path = os.fspath(path)
    refuse_pickles(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    cfg_file = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"no config.json next to {path} ({what})")
    with open(cfg_file) as f:
        return json.load(f)


def load_diffusers_transformer(path: str, *, dtype: str = "float32", **config_overrides):
    """A diffusers `WanTransformer3DModel` folder -> (WanDiT module, fp32 params).

    Also reads the original Wan2.1 release (its config.json and `blocks.0.self_attn.q.weight`-style
    names, with or without a `model.`/`diffusion_model.` prefix), as a folder or one .safetensors file.

    dtype is the compute dtype of the returned module (params are always fp32). Other keyword
    arguments override DiTConfig fields (turn_stride, attention_backend, remat_policy, ...).
    """
    d = read_checkpoint_config(path, "a diffusers or original Wan2.1 config is needed")
    original = "dim" in d and "num_attention_heads" not in d  # the original Wan2.1 config.json
    config = (config_from_wan_original if original else config_from_diffusers)(d, dtype=dtype, **config_overrides)
    state = read_safetensors(path)
    original_names = is_original_naming(state)
    if original_names:
        state = from_original_naming(state, config)
    try:
        params = from_state_dict(state, config)
    except ValueError as e:  # name the tensor as the user's file does
        msg = str(e)
        if original_names:
            for k in state:
                msg = msg.replace(repr(k), f"{original_key(k)!r} (diffusers name {k!r})")
        raise ValueError(f"{path}: {msg}") from None
    return WanDiT(config), jax.tree.map(jnp.asarray, params)


def write_safetensors_folder(state: dict[str, np.ndarray], out_dir: str, config: dict, *,
                             weights_name: str = WEIGHTS_NAME, max_shard_bytes: int = 5 * 2**30,
                             overwrite: bool = False):
    """Writes `config.json` + tensors as diffusers does (one file, or shards plus an index when large).

    An existing non-empty `out_dir` is refused unless overwrite=True.
    """
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True to replace it")
    os.makedirs(out_dir, exist_ok=True)
    shards, cur, size = [], {}, 0
    for k, v in state.items():
        if cur and size + v.nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + v.nbytes
    shards.append(cur)
    # safetensors.flax writes bfloat16 (numpy's writer cannot)
    if len(shards) == 1:
        save_file({k: jnp.asarray(v) for k, v in shards[0].items()}, os.path.join(out_dir, weights_name),
                  metadata={"format": "pt"})
    else:
        stem = weights_name[:-len(".safetensors")]
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({k: jnp.asarray(v) for k, v in shard.items()}, os.path.join(out_dir, name),
                      metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        with open(os.path.join(out_dir, weights_name + ".index.json"), "w") as f:
            json.dump({"metadata": {"total_size": sum(v.nbytes for v in state.values())},
                       "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def save_diffusers_transformer(config: DiTConfig, params: dict, out_dir: str, *, dtype=None,
                               max_shard_bytes: int = 5 * 2**30, overwrite: bool = False):
    """Writes a folder that `WanTransformer3DModel.from_pretrained(out_dir)` loads (sharded if large)."""
    write_safetensors_folder(to_state_dict(params, config, dtype=dtype), out_dir, config_to_diffusers(config),
                             max_shard_bytes=max_shard_bytes, overwrite=overwrite)


def dit_config_dict(config: DiTConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


# This project's params folders (orbax) -----------------------------------------------------------
def save_jax_params(config: DiTConfig, params: dict, out_dir: str, *, overwrite: bool = False):
    """Writes `out_dir/config.json` (DiTConfig) and `out_dir/params` (an orbax checkpoint)."""
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True to replace it")
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out_dir, "params"), params, force=overwrite)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(dit_config_dict(config), f, indent=2)


def load_jax_params(path: str, **config_overrides):
    """Reads a folder written by `save_jax_params` -> (WanDiT module, params)."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file) or not os.path.isdir(os.path.join(path, "params")):
        raise FileNotFoundError(f"{path} is not an anchoredit_jax params folder (config.json + params/)")
    with open(cfg_file) as f:
        config = dataclasses.replace(DiTConfig.from_dict(json.load(f)), **config_overrides).validate()
    target = on_one_device(nn.unbox(abstract_params(config)))
    with ocp.StandardCheckpointer() as ckptr:
        try:
            params = ckptr.restore(os.path.join(path, "params"), target)
        except ValueError as e:  # orbax names the mismatching leaf in its message
            raise ValueError(f"params in {path} do not match its config.json: {e}") from None
    return WanDiT(config), params

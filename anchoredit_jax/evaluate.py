"""Evaluate multi-turn editing methods per turn on held-out ShapesEdit (and JSONL data).

    python -m anchoredit_jax.evaluate --checkpoint stage1=runs/stage1_shapes --checkpoint stage2=runs/stage2_shapes \\
        --weights params --turns 10 --num-sequences 16 --protocols edit,roundtrip,noop --out out/eval

A METHOD is a checkpoint plus a memory preset plus sampler settings; every method edits the same
sequences with the same noise (seed --seed, batch b uses fold_in(key, b)), so differences are the
methods'. Presets (--methods, comma-separated; default anchor_w4,naive):
  anchor_wN     AnchorEdit: anchor slot (the source) + window of the last N turns
  no_anchor_wN  the same memory without the anchor (ablation)
  naive         naive chaining: window 1, no anchor (each turn sees only the previous output)
  mcie          MCIE (training-free, mcie.py) with the previous frame only as memory
  mcie_anchor_wN  MCIE stacked on AnchorEdit's anchor + window-N memory
  copy          do nothing: every turn returns the source's latent, decoded by the same VAE (the
                floor for edit_psnr, the ceiling for identity_psnr; a method that does not beat it
                in edit_psnr is not following instructions)
  truth         the ground truth: every turn returns its target's latent (the source's where a turn has
                none), decoded by the same VAE: the ceiling of any model on that VAE
  (MCIE rows use MCIE's own sampler defaults: 8 FireFlow steps, the paper's; guidance as the others)
--windows 1,2,4 adds anchor_wN for each N (and no_anchor_wN with --no-anchor). --steps and
--sampler take comma lists: every value makes its own method (name suffix /sN, /sampler); so do
--anchor-weights, --anchor-gates and --latest-weights (memory.read's weights: /aW, /gG, /lW) and
--edit-regions (editor.SamplerSettings.edit_region, 0 = off: /rT) with --outside-mixes (its
outside_mix, for each region but 0: /oA).
Checkpoints: --checkpoint [NAME=]WORKDIR[@ema|params|best], repeatable (stage 1 vs 2 vs 3).
Sampler settings not given (--steps, --sampler, --guidance, --shift) come from each checkpoint's
config `val` section, as in the edit CLI: a distilled stage-3 run then samples with its own
4-step consistency sampler next to stage 1/2 with their 20 Euler steps.

Protocols (--protocols): edit (held-out ShapesEdit sequences), roundtrip (add X / remove X
alternating; ground truth = source after every remove), noop (M no-op turns; ground truth = source),
jsonl (--jsonl FILE in the project's JSONL format: vs targets where given, vs the source always).
Metrics: anchoredit_jax/eval_metrics.py. --clip DIR / --dino DIR (HuggingFace CLIPModel / DINO
ViTModel folders you supply) add clip_i, source_clip_i, clip_t (JSONL turns' "caption") / dino,
source_dino (anchoredit_jax/feature_nets.py).

Output in --out (written by eval_report.py): metrics.csv (method, protocol, turn, metric, value, n: the means),
per_sequence.csv.gz (method, protocol, sequence, turn, metric, value: what they are means of, for
paired comparisons: benchmarks/readme_tables.py --against), summary.json (settings,
methods, timings, curves), metric_<name>.png (a panel per protocol, a line per method),
contact_sheet.png (first protocol; contact_sheet_<protocol>.png for the others: per shown
sequence the ground truth, then a row per method; --sheet sequences), table.md (the
printed table: turns 1, 5, 10, 20, 30). A non-empty --out needs --overwrite (only these files
are replaced). Errors print one line "error: ..." and exit 1 (2 for bad flags).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from anchoredit_jax import checkpointing, compile_cache
from anchoredit_jax import edit as edit_cli
from anchoredit_jax import edit_session
from anchoredit_jax import editor, encoders, eval_methods, eval_metrics, eval_report, feature_nets, sampler
from anchoredit_jax import text_encoder as te
from anchoredit_jax.data import jsonl
from anchoredit_jax.data.images import resolution_hw, to_float, to_uint8
from anchoredit_jax.data.shapes_edit import SPLITS
from anchoredit_jax.data.shapes_protocols import PROTOCOLS, make_sequence
from anchoredit_jax.model import WanDiT
from anchoredit_jax.train_vae import load_lpips

EvalError = edit_session.EditError  # one user-facing error type for both CLIs
NOOP_PAD = "keep it as it is"  # instruction of padding turns (short JSONL sequences); never scored


# ----------------------------------------------------------------------------- methods (eval_methods.py)
Method, METHODS = eval_methods.Method, eval_methods.METHODS


def parse_preset(preset: str) -> dict:
    try:
        return eval_methods.parse_preset(preset)
    except ValueError as e:
        raise EvalError(str(e)) from None


def method_grid(args) -> tuple[list[str], list[int | None], list[str | None]]:
    """Checks --methods/--windows/--steps/--sampler before anything slow -> (presets, steps, samplers);
    None in steps/samplers: the checkpoint's own `val` setting."""
    presets = [p for p in args.methods.split(",") if p]
    windows = _int_list(args.windows, "--windows") if args.windows else []
    variants = ("", "no_") if args.no_anchor else ("",)
    presets += [f"{no}anchor_w{w}" for w in windows for no in variants]
    presets = list(dict.fromkeys(presets))
    if not presets:
        raise EvalError("no methods: give --methods and/or --windows")
    for p in presets:
        parse_preset(p)
    steps = _int_list(args.steps, "--steps") if args.steps else [None]
    samplers = [s for s in args.sampler.split(",") if s] if args.sampler else [None]
    bad = [s for s in samplers if s not in sampler.METHODS + (None,)]
    if bad or not samplers:
        raise EvalError(f"--sampler {args.sampler!r}: each must be one of {sampler.METHODS}")
    return presets, steps, samplers


def _float_list(text: str, flag: str, *, positive: bool) -> list[float]:
    """A comma list of numbers, each > 0 (positive) or >= 0; one EvalError naming `flag` otherwise."""
    try:
        vals = [float(v) for v in text.split(",") if v]
    except ValueError:
        raise EvalError(f"{flag} {text!r}: expected comma-separated numbers") from None
    if not vals or min(vals) < 0 or (positive and min(vals) == 0):
        raise EvalError(f"{flag} {text!r}: each must be {'>' if positive else '>='} 0")
    return vals


def anchor_weights(args) -> list[float]:
    """--anchor-weights "1,0.5" -> [1.0, 0.5] (each > 0; default [1.0]: the memory as trained)."""
    return _float_list(args.anchor_weights or "1", "--anchor-weights", positive=True)


def anchor_gates(args) -> list[float]:
    """--anchor-gates "0,0.2" -> [0.0, 0.2] (each >= 0; 0: the weight on every anchor token). A gate
    applies to the weights other than 1 (memory.read); weight 1 runs once, ungated."""
    vals = _float_list(args.anchor_gates or "0", "--anchor-gates", positive=False)
    if max(vals) > 0 and all(w == 1 for w in anchor_weights(args)):
        raise EvalError(f"--anchor-gates {args.anchor_gates!r} gates an anchor weight: add --anchor-weights with "
                        "one other than 1")
    return vals


def latest_weights(args) -> list[float]:
    """--latest-weights "1,2" -> [1.0, 2.0] (each > 0; default [1.0]: the memory as trained)."""
    return _float_list(args.latest_weights or "1", "--latest-weights", positive=True)


def edit_regions(args) -> list[float]:
    """--edit-regions "0,0.3" -> [0.0, 0.3] (each >= 0; default [0.0]: every token from the new sample)."""
    return _float_list(args.edit_regions or "0", "--edit-regions", positive=False)


def outside_mixes(args) -> list[float]:
    """--outside-mixes "0,0.2" -> [0.0, 0.2] (each in [0, 1]; default [0.0]); needs a region but 0."""
    vals = _float_list(args.outside_mixes or "0", "--outside-mixes", positive=False)
    if max(vals) > 1:
        raise EvalError(f"--outside-mixes {args.outside_mixes!r}: each must be <= 1")
    if args.outside_mixes and all(r == 0 for r in edit_regions(args)):
        raise EvalError(f"--outside-mixes {args.outside_mixes!r} mixes outside an edit region: add --edit-regions "
                        "with one other than 0")
    return vals


def make_methods(args, vals: dict[str, dict]) -> list[Method]:
    """The grid checkpoints x presets x steps x samplers; vals: checkpoint name -> its config's `val`
    section, which supplies the sampler settings not given on the command line (as in the edit CLI)."""
    presets, steps, samplers = method_grid(args)
    weights, gates, latest, regions = anchor_weights(args), anchor_gates(args), latest_weights(args), edit_regions(args)
    mixes = outside_mixes(args)
    out = []
    for ck, val in vals.items():
        for p, n, s, a, g, lw, r, o in itertools.product(presets, steps, samplers, weights, gates, latest, regions,
                                                         mixes):
            if (a == 1 and g) or (r == 0 and o):  # nothing to gate, no region to mix outside of
                continue
            name = (f"{ck}/{p}" + (f"/s{n}" if len(steps) > 1 else "") + (f"/{s}" if len(samplers) > 1 else "")
                    + (f"/a{a:g}" if len(weights) > 1 or a != 1 else "") + (f"/g{g:g}" if g else "")
                    + (f"/l{lw:g}" if len(latest) > 1 or lw != 1 else "")
                    + (f"/r{r:g}" if len(regions) > 1 or r else "")
                    + (f"/o{o:g}" if r and (len(mixes) > 1 or o) else ""))
            settings = editor.SamplerSettings(
                num_steps=n or val.get("sample_steps", 20), method=s or val.get("sampler", "euler"),
                guidance=args.guidance if args.guidance is not None else val.get("guidance", 3.0),
                shift=args.shift if args.shift is not None else val.get("sample_shift", 1.0),
                anchor_weight=a, anchor_gate=g, latest_weight=lw, edit_region=r, outside_mix=o)
            out.append(Method(name, ck, settings=settings, **parse_preset(p)))
    return out


def _int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise EvalError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not vals or min(vals) < 1:
        raise EvalError(f"{flag} {text!r}: every value must be an integer >= 1")
    return vals


# ----------------------------------------------------------------------------- data
@dataclasses.dataclass
class Batchable:
    """N sequences of one protocol as stacked arrays (K turns; short ones padded, exists=False)."""

    name: str
    source: np.ndarray  # [N, H, W, 3] uint8
    targets: np.ndarray  # [N, K, H, W, 3] uint8
    masks: np.ndarray  # [N, K, H, W] bool
    has_target: np.ndarray  # [N, K] bool
    has_mask: np.ndarray  # [N, K] bool
    exists: np.ndarray  # [N, K] bool
    instructions: list[list[str]]  # N x K
    seeds: list[int]
    captions: list[list[str]] = dataclasses.field(default_factory=list)  # N x K ("" = none)
    caption_emb: np.ndarray | None = None  # [N, K, D] CLIP text embeddings (zeros: no caption), with --clip


def stack_sequences(name: str, seqs, turns: int) -> Batchable:
    n, (h, w) = len(seqs), seqs[0].source.shape[:2]
    b = Batchable(name, np.stack([s.source for s in seqs]), np.zeros((n, turns, h, w, 3), np.uint8),
                  np.zeros((n, turns, h, w), bool), np.zeros((n, turns), bool), np.zeros((n, turns), bool),
                  np.zeros((n, turns), bool), [], [s.seed for s in seqs])
    for i, s in enumerate(seqs):
        k = min(turns, len(s.instructions))
        b.targets[i, :k], b.masks[i, :k] = s.targets[:k], s.masks[:k]
        b.has_target[i, :k], b.has_mask[i, :k], b.exists[i, :k] = s.has_target[:k], s.has_mask[:k], True
        b.instructions.append(list(s.instructions[:k]) + [NOOP_PAD] * (turns - k))
        b.captions.append(list(s.captions[:k]) + [""] * (turns - k))
    return b


def embed_captions(d: Batchable, clip: feature_nets.Clip | None) -> None:
    """Fills d.caption_emb: CLIP text embeddings of the captions given, zeros elsewhere ([N, K, 1] without CLIP)."""
    n, k = d.has_target.shape
    if clip is None:
        d.caption_emb = np.zeros((n, k, 1), np.float32)
        return
    d.caption_emb = np.zeros((n, k, clip.tower.projection_dim), np.float32)
    where = [(i, t) for i in range(n) for t in range(k) if d.captions[i][t]]
    if where:
        d.caption_emb[tuple(np.array(where).T)] = np.asarray(clip.text([d.captions[i][t] for i, t in where]))


def load_feature_nets(args) -> dict:
    """--clip / --dino folders -> {"clip": Clip, "dino": ImageEmbedder} (those given)."""
    loaders = {"clip": feature_nets.load_clip, "dino": feature_nets.load_dino}
    try:
        return {name: loaders[name](path) for name, path in (("clip", args.clip), ("dino", args.dino)) if path}
    except feature_nets.FeatureNetError as e:
        raise EvalError(str(e)) from None


def all_metrics(lpips_fn, nets: dict, net_vars: dict, images, targets, source, masks, has_target, has_mask, exists,
                caption_emb):
    """eval_metrics.per_turn_metrics, and feature_metrics with the networks in nets (their weights in
    net_vars: arguments, not constants baked into the compiled program). caption_emb [K, B, D]."""
    out = eval_metrics.per_turn_metrics(lpips_fn, images, targets, source, masks, has_target, has_mask, exists)
    embed = {k: functools.partial(nets[k].apply, net_vars[k]) for k in nets}
    has_caption = jnp.any(caption_emb != 0, -1)
    return out | eval_metrics.feature_metrics(embed, images, targets, source, caption_emb, has_caption, has_target,
                                              exists)


def load_protocols(args, resolution) -> list[Batchable]:
    out = []
    for p in args.protocols:
        if p == "jsonl":
            try:
                records = jsonl.read_jsonl(args.jsonl)[:args.num_sequences]
                seqs = [jsonl.load_sequence(r, resolution, num_turns=args.turns) for r in records]
            except (jsonl.DataFormatError, OSError) as e:
                raise EvalError(f"--jsonl {args.jsonl}: {e}") from None
        else:
            seqs = [make_sequence(p, args.seed_start + i, args.turns, resolution, args.split)
                    for i in range(args.num_sequences)]
        out.append(stack_sequences(p, seqs, args.turns))
    return out


# ----------------------------------------------------------------------------- checkpoints
def parse_checkpoint(spec: str, default_weights: str) -> tuple[str, str, str]:
    """[NAME=]PATH[@WEIGHTS] -> (name, path, weights)."""
    name, _, path = spec.rpartition("=")
    path, weights = (path.rsplit("@", 1) if path.rsplit("@", 1)[-1] in ("ema", "params", "best")
                     else (path, default_weights))
    return name or os.path.basename(os.path.normpath(path)), path, weights


@dataclasses.dataclass
class Loaded:
    model: WanDiT
    params: dict
    enc: encoders.Encoders
    frozen: encoders.FrozenParams
    resolution: tuple[int, int]
    max_text_len: int
    val: dict  # the run config's `val` section: sampler defaults
    info: dict


def load_checkpoint(path: str, weights: str, vae: str = "") -> Loaded:
    """`vae`: a VAE workdir in place of the run config's vae.workdir (e.g. a decoder fine-tune)."""
    config, mcfg, params, info = edit_session.load_checkpoint(path, weights)
    edit_session.check_params(mcfg, params, f"--checkpoint {path}")
    if vae:
        config.vae.workdir = vae
    try:
        enc, frozen = encoders.load_encoders(config)
    except Exception as e:  # noqa: BLE001 - many failure types; one line for the user
        raise EvalError(f"cannot load the encoders of {path} (vae.workdir={config.vae.workdir!r}): "
                        f"{type(e).__name__}: {e}") from None
    res = config.data.get("resolution")
    if not res:
        raise EvalError(f"{path}/config.json has no data.resolution")
    return Loaded(WanDiT(mcfg), params, enc, frozen, resolution_hw(res), config.text.max_length,
                  config.get("val", {}), dict(info, path=os.path.abspath(path)))


def embed_instructions(ld: Loaded, instructions: list[list[str]]):
    """N x K strings -> (texts [N, K, L, D], masks [N, K, L]) on the host."""
    n, k = len(instructions), len(instructions[0])
    ids, mask = te.make_tokenize_fn(ld.max_text_len)([t for row in instructions for t in row])
    text, tmask = encoders.TextEmbeddingCache(ld.enc, ld.frozen)(ids, mask)
    return np.asarray(text).reshape(n, k, *text.shape[1:]), np.asarray(tmask).reshape(n, k, -1)


# ----------------------------------------------------------------------------- evaluation
def batch_indices(n: int, batch_size: int) -> list[np.ndarray]:
    """Index arrays of size batch_size; the last is padded with its final index (one program)."""
    out = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        out.append(np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])]))
    return out


def target_latents(encode_fn, ld: Loaded, data: Batchable, idx, source_latent):
    """[K, B, h, w, C]: the latents of the batch's targets; the source's on turns without one."""
    tgt = to_float(np.swapaxes(data.targets[idx], 0, 1))  # [K, B, H, W, 3]
    lat = encode_fn(ld.frozen, tgt.reshape((-1,) + tgt.shape[2:]))
    lat = lat.reshape(tgt.shape[:2] + lat.shape[1:])
    has = np.swapaxes(data.has_target[idx], 0, 1)[..., None, None, None]
    return jnp.where(has, lat, source_latent[None])


def evaluate_method(run_fn, encode_fn, decode_fn, metrics_fn, ld: Loaded, data: Batchable, text, tmask, *,
                    batch_size: int, seed: int, keep: int, bar, truth: bool = False) -> tuple[dict, np.ndarray, dict]:
    """One method on one protocol -> ({metric: (values [N, K], valid [N, K])}, uint8 outputs of the first
    `keep` sequences [keep, K, H, W, 3], timing: seconds incl. compilation and seconds per turn of
    one batch of edits, from the batches after the first (compiled) one when there are any)."""
    vals, shown, t0, edit_secs = {}, [], time.perf_counter(), []
    for bi, idx in enumerate(batch_indices(len(data.seeds), batch_size)):
        src = to_float(data.source[idx])
        source_latent = jax.block_until_ready(encode_fn(ld.frozen, src))
        extra = (target_latents(encode_fn, ld, data, idx, source_latent),) if truth else ()
        t_edit = time.perf_counter()
        latents = jax.block_until_ready(run_fn(ld.params, source_latent, np.swapaxes(text[idx], 0, 1),
                                               np.swapaxes(tmask[idx], 0, 1),
                                               jax.random.fold_in(jax.random.key(seed), bi), *extra))
        edit_secs.append(time.perf_counter() - t_edit)
        images = decode_fn(ld.frozen, latents)  # [K, B, H, W, 3]
        t = lambda a: np.swapaxes(a[idx], 0, 1)  # noqa: E731 - [B, K, ...] -> [K, B, ...]
        got = jax.device_get(metrics_fn(images, to_float(t(data.targets)), src, t(data.masks), t(data.has_target),
                                        t(data.has_mask), t(data.exists), t(data.caption_emb)))
        real = len(np.unique(idx))  # padding repeats the last index
        for name, (v, ok) in got.items():
            vals.setdefault(name, ([], []))
            vals[name][0].append(v.T[:real])
            vals[name][1].append(ok.T[:real])
        if len(shown) * batch_size < keep:
            shown.append(np.swapaxes(to_uint8(images), 0, 1)[:real])
        bar.update(1)
    out = {k: (np.concatenate(v), np.concatenate(ok)) for k, (v, ok) in vals.items()}
    warm = edit_secs[1:] or edit_secs
    timing = dict(seconds_incl_compile=time.perf_counter() - t0, batch_size=batch_size,
                  seconds_per_turn=float(np.median(warm)) / text.shape[1], includes_compile=len(edit_secs) == 1)
    return out, np.concatenate(shown)[:keep] if shown else None, timing


def run(args) -> dict:
    specs = [parse_checkpoint(s, args.weights) for s in args.checkpoint]
    names = [s[0] for s in specs]
    if len(set(names)) != len(names):
        raise EvalError(f"checkpoint names must be unique, got {names}; use NAME=PATH")
    presets = method_grid(args)[0]  # bad method names and lists fail before the slow loading
    for flag, vals, off in (("--anchor-weights", anchor_weights(args), [1.0]),
                            ("--latest-weights", latest_weights(args), [1.0]),
                            ("--edit-regions", edit_regions(args), [0.0])):
        if vals != off and any(parse_preset(p)["kind"] != "anchoredit" for p in presets):
            raise EvalError(f"{flag} applies to AnchorEdit's editor: leave out the mcie, copy and truth methods")
    anchor_gates(args), outside_mixes(args)  # bad gate and mix lists fail before the slow loading
    edit_cli.check_out_dir(args.out, args.overwrite)
    nets = load_feature_nets(args)
    loaded = {name: load_checkpoint(path, w, args.vae) for name, path, w in specs}
    methods = make_methods(args, {name: ld.val for name, ld in loaded.items()})
    res = {ld.resolution for ld in loaded.values()}
    if len(res) > 1:
        raise EvalError(f"the checkpoints have different resolutions {sorted(res)}; evaluate them separately")
    datasets = load_protocols(args, res.pop())
    for d in datasets:
        embed_captions(d, nets.get("clip"))
    lpips_fn = load_lpips()
    metrics_fn = functools.partial(jax.jit(functools.partial(all_metrics, lpips_fn, nets)),
                                   {k: net.variables for k, net in nets.items()})
    results, sheets, timings = {}, {}, {}
    bar = tqdm(total=sum(len(batch_indices(len(d.seeds), args.batch_size)) for d in datasets) * len(methods),
               desc="batches x methods", unit="batch", file=sys.stderr)
    for ck, ld in loaded.items():
        encode_fn, decode_fn = jax.jit(ld.enc.encode_images), jax.jit(ld.enc.decode_latents)  # once per checkpoint
        embedded = {d.name: embed_instructions(ld, d.instructions) for d in datasets}
        for m in (m for m in methods if m.checkpoint == ck):
            run_fn = METHODS[m.kind](ld.model, ld.enc, m)
            for d in datasets:
                bar.set_postfix_str(f"{m.name} {d.name}")
                vals, shown, secs = evaluate_method(
                    run_fn, encode_fn, decode_fn, metrics_fn, ld, d, *embedded[d.name], batch_size=args.batch_size,
                    seed=args.seed, keep=args.sheet, bar=bar, truth=m.kind in eval_methods.TAKES_TARGETS)
                results[(m.name, d.name)], sheets[(m.name, d.name)] = vals, shown
                timings[f"{m.name} {d.name}"] = secs
    bar.close()
    eval_report.write_outputs(args, methods, datasets, loaded, results, sheets, timings)
    return results


# ----------------------------------------------------------------------------- entry point
def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m anchoredit_jax.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", required=True, help="[NAME=]WORKDIR[@WEIGHTS], repeatable")
    ap.add_argument("--weights", default="ema", choices=("ema", "params", "best"), help="default for checkpoints")
    ap.add_argument("--vae", default="", help="a VAE workdir for every checkpoint, in place of its vae.workdir")
    ap.add_argument("--methods", default="anchor_w4,naive", help="comma-separated presets (see above)")
    ap.add_argument("--windows", default="", help="e.g. 1,2,4: adds anchor_wN (and no_anchor_wN with --no-anchor)")
    ap.add_argument("--no-anchor", action="store_true", help="with --windows: also the no-anchor variants")
    ap.add_argument("--steps", default=None, help="sampler steps per turn; comma list = one method each "
                                                  "(default: each checkpoint's config val.sample_steps)")
    ap.add_argument("--sampler", default=None, help=f"one of {sampler.METHODS}; comma list = one method each "
                                                    "(default: config val.sampler)")
    ap.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: config val)")
    ap.add_argument("--shift", type=float, default=None, help="timestep shift (default: config val)")
    ap.add_argument("--anchor-weights", default=None, help="e.g. 1,0.5: the anchor's attention weight (memory.read; "
                                                           "1 as trained); comma list = one method each")
    ap.add_argument("--anchor-gates", default=None, help="e.g. 0,0.2: weigh only the anchor tokens the newest frame "
                                                         "has not changed (memory.read's anchor_gate; 0 = all); "
                                                         "comma list = one method each, with each weight but 1")
    ap.add_argument("--latest-weights", default=None, help="e.g. 1,2: the newest frame's attention weight "
                                                           "(memory.read; 1 as trained); comma list = one method each")
    ap.add_argument("--edit-regions", default=None, help="e.g. 0,0.3: keep the previous frame outside the tokens the "
                                                         "instruction changes by more than this (editor's edit_region; "
                                                         "0 = off); comma list = one method each")
    ap.add_argument("--outside-mixes", default=None, help="e.g. 0,0.2: the share of the new sample taken outside "
                                                          "each edit region but 0 (0: the previous frame); comma list")
    ap.add_argument("--protocols", default=None, help=f"comma list of {PROTOCOLS + ('jsonl',)}; default edit "
                                                      "(jsonl if --jsonl is given)")
    ap.add_argument("--jsonl", default=None, help="real data in the project's JSONL format (protocol jsonl)")
    ap.add_argument("--clip", default="", help="a HF CLIPModel folder (e.g. openai/clip-vit-base-patch32, downloaded "
                                               "by you): adds clip_i, source_clip_i and clip_t (JSONL captions)")
    ap.add_argument("--dino", default="", help="a HF ViTModel folder with DINO weights (e.g. facebook/dino-vits16): "
                                               "adds dino and source_dino")
    ap.add_argument("--turns", type=int, default=30)
    ap.add_argument("--num-sequences", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per jitted call")
    ap.add_argument("--split", default="heldout_seeds", choices=SPLITS)
    ap.add_argument("--seed-start", type=int, default=10_000, help="ShapesEdit sequence i uses seed-start + i")
    ap.add_argument("--seed", type=int, default=0, help="sampler noise")
    ap.add_argument("--sheet", type=int, default=2, help="sequences in contact_sheet.png (0: none)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--overwrite", action="store_true", help="allow a non-empty --out (only our files replaced)")
    args = ap.parse_args(argv)
    for flag in ("turns", "num_sequences", "batch_size"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.sheet < 0:
        ap.error(f"--sheet must be >= 0, got {args.sheet}")
    if args.shift is not None and args.shift <= 0:
        ap.error(f"--shift must be > 0, got {args.shift}")
    args.protocols = [p for p in (args.protocols or ("jsonl" if args.jsonl else "edit")).split(",") if p]
    bad = [p for p in args.protocols if p not in PROTOCOLS + ("jsonl",)]
    if bad or not args.protocols:
        ap.error(f"--protocols: unknown {bad}; choose from {PROTOCOLS + ('jsonl',)}")
    if "jsonl" in args.protocols and not args.jsonl:
        ap.error("protocol jsonl needs --jsonl FILE")
    if args.jsonl and not os.path.isfile(args.jsonl):
        ap.error(f"--jsonl {args.jsonl}: no such file")
    for flag in ("clip", "dino"):
        if getattr(args, flag) and not os.path.isdir(getattr(args, flag)):
            ap.error(f"--{flag} {getattr(args, flag)}: no such folder")
    args.sheet = min(args.sheet, args.num_sequences)
    return args


def main(argv=None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 error, 2 bad flags)."""
    checkpointing.quiet_logging()
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    compile_cache.enable()  # after the flags: --help or a bad flag makes no cache folder
    try:
        t0 = time.perf_counter()
        run(args)
        print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

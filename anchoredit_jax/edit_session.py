"""The edit CLI's model side: a checkpoint loaded and checked against its config, the encoders, and
the compiled turn (`Session`), for AnchorEdit or MCIE; and `Editor`, the same from Python (also
`anchoredit_jax.Editor`). `anchoredit_jax.edit` is the CLI around it; `anchoredit_jax.evaluate`
loads checkpoints the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
import types
import warnings
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from PIL import Image

from anchoredit_jax import checkpointing, editor, encoders, mcie, release, sampler
from anchoredit_jax import model as model_lib
from anchoredit_jax import text_encoder as te
from anchoredit_jax.data import jsonl
from anchoredit_jax.data.images import resolution_hw, to_float, to_uint8

METHODS = ("anchoredit", "mcie")
MCIE_DEFAULTS = mcie.MCIESettings()
# (flag, MCIESettings field, type, help); argparse's dest is the field name
MCIE_FLAGS = (
    ("--inversion-steps", "inversion_steps", int, "inversion steps (0: as --steps)"),
    ("--gamma", "gamma", float, "inversion LQR strength"),
    ("--eta", "eta", float, "sampling LQR strength"),
    ("--lam", "lam", float, "X_dual = X_src + lam (X_prev - X_src)"),
    ("--guided-frac", "guided_frac", float, "share of the first sampling steps with the LQR on"),
    ("--highlight-in", "highlight_in", float, "attention scale inside the highlight mask (in=out=1: off)"),
    ("--highlight-out", "highlight_out", float, "attention scale outside the mask"),
    ("--highlight-ranks", "highlight_ranks", float, "LO HI: blocks ranked by activation, fractions"),
    ("--highlight-threshold", "highlight_threshold", float, "mask threshold on the sigmoid of the maps"),
)


def memory_layout(args) -> tuple[int, bool]:
    """(window, keep_anchor): MCIE alone conditions on the previous frame only (window 1, no anchor)."""
    if args.method == "mcie" and args.window is None:
        return 1, False
    return (args.window or 4), not args.no_anchor


def mcie_settings(args, *, guidance: float, shift: float) -> mcie.MCIESettings:
    """MCIESettings from the flags (unset ones keep the dataclass defaults); ValueError names a bad one."""
    given = {field: (tuple(getattr(args, field)) if isinstance(getattr(MCIE_DEFAULTS, field), tuple)
                     else getattr(args, field))
             for _, field, _, _ in MCIE_FLAGS if getattr(args, field) is not None}
    return dataclasses.replace(MCIE_DEFAULTS, num_steps=args.steps or MCIE_DEFAULTS.num_steps,
                               method=args.sampler or MCIE_DEFAULTS.method, guidance=guidance, shift=shift,
                               **given).validate()


# The options `Session` reads, with the CLI's defaults (anchoredit_jax.edit's flags; `Editor`'s keywords)
OPTIONS = dict(weights="ema", method="anchoredit", window=None, no_anchor=False, steps=None, sampler=None,
               guidance=None, shift=None, anchor_weight=None, anchor_gate=None, latest_weight=None, edit_region=None,
               outside_mix=None, vae="",
               **{field: None for _, field, _, _ in MCIE_FLAGS})


def check_options(o, cli: bool = True) -> None:
    """ValueError naming the first bad editing option, as a CLI flag (`--window`) or, with cli=False,
    as an `Editor` keyword (`window`)."""
    name = (lambda f: "--" + f.replace("_", "-")) if cli else (lambda f: f)
    for f, allowed in (("weights", ("ema", "params", "best")), ("method", METHODS), ("sampler", sampler.METHODS)):
        v = getattr(o, f)
        if v is not None and v not in allowed:
            raise ValueError(f"{name(f)} must be one of {', '.join(allowed)}, got {v!r}")
    for f in ("window", "steps"):
        v = getattr(o, f)
        if v is not None and v < 1:
            raise ValueError(f"{name(f)} must be >= 1, got {v}")
    if o.shift is not None and o.shift <= 0:
        raise ValueError(f"{name('shift')} must be > 0, got {o.shift}")
    if o.anchor_weight is not None and (o.anchor_weight <= 0 or o.method == "mcie" or o.no_anchor):
        raise ValueError(f"{name('anchor_weight')} must be > 0 and weighs AnchorEdit's anchor: not with "
                         f"{name('method')} mcie or {name('no_anchor')}, got {o.anchor_weight}")
    if o.anchor_gate is not None and (not o.anchor_gate > 0 or o.anchor_weight in (None, 1.0)):
        raise ValueError(f"{name('anchor_gate')} must be > 0 and gates {name('anchor_weight')} (give a weight "
                         f"other than 1), got {o.anchor_gate}")
    if o.latest_weight is not None and (o.latest_weight <= 0 or o.method == "mcie"):
        raise ValueError(f"{name('latest_weight')} must be > 0 and weighs AnchorEdit's memory: not with "
                         f"{name('method')} mcie, got {o.latest_weight}")
    if o.edit_region is not None and (not o.edit_region > 0 or o.method == "mcie"):
        raise ValueError(f"{name('edit_region')} must be > 0 (a mean squared latent distance) and is AnchorEdit's: "
                         f"not with {name('method')} mcie, got {o.edit_region}")
    if o.outside_mix is not None and (not 0 <= o.outside_mix <= 1 or o.edit_region is None):
        raise ValueError(f"{name('outside_mix')} must be in [0, 1] and mixes outside {name('edit_region')} (give "
                         f"one), got {o.outside_mix}")
    given = [field for _, field, _, _ in MCIE_FLAGS if getattr(o, field) is not None]
    if o.method != "mcie" and given:
        raise ValueError(f"{name(given[0])} is an MCIE option; add " + ("--method mcie" if cli else "method='mcie'"))
    if o.method == "mcie":
        if o.sampler is not None and o.sampler not in mcie.SOLVERS:
            raise ValueError(f"{name('method')} mcie inverts with an ODE solver: {name('sampler')} must be one of "
                             f"{', '.join(mcie.SOLVERS)}, got {o.sampler!r}")
        mcie_settings(o, guidance=1.0, shift=1.0)  # ValueError names a bad MCIE value


class EditError(Exception):
    """A user-facing problem: main() prints the message (no traceback) and exits with 1."""


NOOP_HINT = "use a no-op phrase like 'keep the image as it is'"


def read_image(path: str, where: str = "--image") -> tuple[Image.Image, dict]:
    """-> (decoded RGB PIL image, {"size": [W, H], "mode"} of the file); EditError if unusable."""
    try:
        hdr = jsonl.open_image(path, where, "input")
        info = {"size": list(hdr.size), "mode": hdr.mode}
        hdr.close()
        return jsonl.decode_image(path, where, "input"), info
    except jsonl.DataFormatError as e:
        raise EditError(str(e)) from None


def fit_image(img: Image.Image, resolution) -> np.ndarray:
    """uint8 [H, W, 3] at the model resolution: cover-resize (Lanczos), centre crop."""
    return jsonl.fit_image(img, resolution_hw(resolution), mask=False)


def check_instruction(turn: int, text) -> None:
    """EditError unless `text` is a non-empty string (an empty one is the unconditional instruction)."""
    if not isinstance(text, str):
        raise EditError(f"instruction {turn} is not a string: {text!r}")
    if te.is_null_instruction(text):
        raise EditError(f"instruction {turn} is empty; empty instructions are refused (that is the "
                        f"unconditional one): {NOOP_HINT}")


def load_checkpoint(path: str, which: str):
    if not os.path.isdir(path):
        raise EditError(f"--checkpoint {path}: no such directory (expected a training workdir)")
    try:
        config, mcfg, params = checkpointing.load_trained(path, which=which)
    except FileNotFoundError as e:
        raise EditError(f"--checkpoint: {e}") from None
    except Exception as e:  # noqa: BLE001 - orbax/config errors come in many types; one line for the user
        raise EditError(f"--checkpoint {path}: cannot load the {which} weights ({type(e).__name__}: {e})") from None
    step = checkpointing.trained_step(path, which)
    if release.is_release(path):  # one set of weights; where it came from is in release.json
        with open(os.path.join(path, "release.json")) as f:
            return config, mcfg, params, {"step": step, "weights": "release", "weights_used": json.load(f)["weights"]}
    used = "params" if which == "ema" and not config.get("ema_decay", 0.0) else which  # no EMA kept: raw params
    return config, mcfg, params, {"step": step, "weights": which, "weights_used": used}


def check_params(mcfg: model_lib.DiTConfig, params, where: str) -> None:
    """The checkpoint's params must have exactly the tree and shapes its config.json builds."""
    want = traverse_util.flatten_dict(nn.unbox(model_lib.abstract_params(mcfg)))
    got = traverse_util.flatten_dict(params) if isinstance(params, dict) else {}
    name = "/".join
    bad = [f"{name(k)}: checkpoint {tuple(got[k].shape)} vs config {tuple(want[k].shape)}"
           for k in sorted(want.keys() & got.keys()) if tuple(got[k].shape) != tuple(want[k].shape)]
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    if bad or missing or extra:
        first = (bad + [f"missing {name(k)}" for k in missing] + [f"unexpected {name(k)}" for k in extra])[0]
        raise EditError(f"{where}: params do not fit its config.json ({len(bad)} shape mismatches, "
                        f"{len(missing)} missing, {len(extra)} unexpected; e.g. {first})")


class Session:
    """Model, encoders and the compiled programs; `turn` is ONE jitted function for every turn."""

    def __init__(self, args):
        t0 = time.perf_counter()
        self.config, mcfg, params, self.ckpt_info = load_checkpoint(args.checkpoint, args.weights)
        check_params(mcfg, params, f"--checkpoint {args.checkpoint}")
        if args.vae:
            self.config.vae.workdir = args.vae
        try:
            enc, frozen = encoders.load_encoders(self.config)
            self.tokenize = te.make_tokenize_fn(self.config.text.max_length)
        except Exception as e:  # noqa: BLE001
            raise EditError(f"cannot load the encoders of {args.checkpoint} (vae.workdir="
                            f"{self.config.vae.workdir!r}; --vae PATH overrides it): {type(e).__name__}: {e}") from None
        if (mcfg.in_channels, mcfg.text_dim) != (enc.latent_channels, enc.text_dim):
            raise EditError(f"the model wants {mcfg.in_channels} latent channels / text dim {mcfg.text_dim} but the "
                            f"encoders give {enc.latent_channels} / {enc.text_dim}")
        # One device, everything committed to it: the turn's jit cache key then never changes.
        self.device = jax.devices()[0]
        self.params, self.frozen = jax.device_put((params, frozen), self.device)
        self.null_text, self.null_mask = jax.device_put(enc.null_text((1,)), self.device)
        val = self.config.get("val", {})
        shift = args.shift if args.shift is not None else val.get("sample_shift", 1.0)
        guidance = args.guidance if args.guidance is not None else val.get("guidance", 3.0)
        model = model_lib.WanDiT(mcfg)
        self.window, self.keep_anchor = memory_layout(args)
        if args.method == "mcie":
            self.settings = mcie_settings(args, guidance=guidance, shift=shift)
            turn, start = mcie.edit_turn, mcie.start
        else:
            self.settings = editor.SamplerSettings(
                num_steps=args.steps or val.get("sample_steps", 20), method=args.sampler or val.get("sampler", "euler"),
                shift=shift, guidance=guidance, anchor_weight=args.anchor_weight or 1.0,
                anchor_gate=args.anchor_gate or 0.0, latest_weight=args.latest_weight or 1.0,
                edit_region=args.edit_region or 0.0, outside_mix=args.outside_mix or 0.0)
            turn, start = editor.edit_turn, editor.start
        self.turn = jax.jit(functools.partial(turn, model, self.settings))
        self._start = jax.jit(functools.partial(start, model, window=self.window, keep_anchor=self.keep_anchor))
        self._encode, self._decode = jax.jit(enc.encode_images), jax.jit(enc.decode_latents)
        self._embed = encoders.TextEmbeddingCache(enc, frozen)
        self.warned, self.warnings, self.memory_bytes = set(), [], None
        self.load_s = time.perf_counter() - t0

    def embed(self, instructions: list[str]):
        """-> device (text [n, L, D], mask [n, L]); a truncation warning is shown once per instruction."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # the default filter may have shown it already, or hide it
            ids, mask = self.tokenize(instructions)
        for w in caught:
            msg = str(w.message)
            if msg not in self.warned:
                self.warned.add(msg)
                self.warnings.append(msg)
                print(f"warning: {msg} (the model sees only the first {ids.shape[1]} tokens)", file=sys.stderr)
        return jax.device_put(self._embed(ids, mask), self.device)

    def start(self, image: np.ndarray):
        """uint8 source -> memory holding it (anchor slot, or window slot 0 with --no-anchor)."""
        x = jax.device_put(to_float(image[None]), self.device)
        mem = self._start(self.params, self._encode(self.frozen, x), self.null_text, self.null_mask)
        self.memory_bytes = mem.nbytes  # interactive mode keeps one per node (its memory/MCIE state) on the host
        return mem

    def run_turn(self, mem, text, mask, depth: int, seed: int):
        """memory (host or device) -> (uint8 image, device memory, seconds of the jitted turn incl. any
        compilation). Host memories are committed to the same device as device ones: one cache entry."""
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), depth - 1)
        mem, rng = jax.device_put((mem, rng), self.device)
        t0 = time.perf_counter()
        latent, mem = jax.block_until_ready(self.turn(self.params, mem, text, mask, self.null_text,
                                                      self.null_mask, rng))
        seconds = time.perf_counter() - t0
        return to_uint8(self._decode(self.frozen, latent))[0], mem, seconds

    def log(self, args, info: dict, turn_seconds: list[float], **extra) -> dict:
        """The log.json / history.json header: what produced these images, and how fast."""
        first, later = (turn_seconds[:1] or [None])[0], turn_seconds[1:]
        steady = float(np.median(later)) if later else None
        s = self.settings
        return dict(
            checkpoint=os.path.abspath(args.checkpoint), **self.ckpt_info, image=os.path.abspath(args.image),
            input_image=info, resolution=list(resolution_hw(self.config.data.resolution)),
            image_policy="to RGB (alpha over white), cover-resize (Lanczos) + centre crop to the model resolution",
            settings=dict(window=self.window, anchor=self.keep_anchor, steps=s.num_steps, sampler=s.method,
                          guidance=s.guidance, shift=s.shift,
                          anchor_weight=getattr(s, "anchor_weight", None) if self.keep_anchor else None,
                          anchor_gate=getattr(s, "anchor_gate", None) if self.keep_anchor else None,
                          latest_weight=getattr(s, "latest_weight", None),
                          edit_region=getattr(s, "edit_region", None), outside_mix=getattr(s, "outside_mix", None)),
            method=args.method, **({"mcie": dataclasses.asdict(s)} if args.method == "mcie" else {}),
            seed=args.seed, warnings=self.warnings, turn_fn_cache_size=self.turn._cache_size(),
            memory_bytes=self.memory_bytes,
            device=str(self.device), jax_version=jax.__version__,
            timings=dict(load_s=self.load_s, first_turn_s_incl_compile=first, later_turn_median_s=steady,
                         later_turns=len(later), compile_estimate_s=None if steady is None else first - steady),
            **extra)


# ----------------------------------------------------------------------------- Python API
@dataclasses.dataclass(frozen=True)
class EditState:
    """Where a multi-turn edit stands; immutable, so keeping one is an undo point and two turns from
    the same one are two branches. memory: the anchor memory (a device pytree); turn: turns taken;
    image: uint8 [H, W, 3], the source at turn 0, else the last result."""
    memory: Any
    turn: int
    image: np.ndarray


class Editor:
    """Multi-turn editing from Python: the edit CLI's model, settings and randomness without its files.

        from anchoredit_jax import Editor
        ed = Editor("weights/shapes_stage3")   # a release folder or a training workdir; options as
                                               # the CLI's flags: window=4, steps=..., method="mcie", ...
        images = ed.edit("in.png", ["add a red hat", "make the background blue"])  # uint8 [H, W, 3] a turn
        s0 = ed.start(image)                   # or turn by turn, branching at will:
        s1 = ed.turn(s0, "add a red hat"); s1.image

    `edit(image, instructions, seed)` gives the same pixels as `python -m anchoredit_jax.edit` with
    the same checkpoint, options and --seed; turn k of any branch draws its noise from (seed, k).
    An image is a path, a PIL image or a uint8 array ([H, W], [H, W, 3] or [H, W, 4]), put to the
    model resolution by the CLI's policy (alpha over white, cover-resize, centre crop).
    Bad options raise ValueError/TypeError; a bad image, instruction or checkpoint raises EditError.
    """

    def __init__(self, checkpoint: str, **options):
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"Editor got unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
        args = types.SimpleNamespace(checkpoint=checkpoint, **{**OPTIONS, **options})
        check_options(args, cli=False)
        self.session = Session(args)

    def prepare(self, image) -> np.ndarray:
        """path | PIL image | uint8 array -> uint8 [H, W, 3] at the model resolution."""
        if isinstance(image, (str, os.PathLike)):
            img = read_image(os.fspath(image), "Editor")[0]
        else:
            if isinstance(image, np.ndarray):
                channels = image.shape[2] if image.ndim == 3 else None  # [H, W]: grey
                if image.dtype != np.uint8 or image.ndim not in (2, 3) or channels not in (None, 3, 4):
                    raise EditError(f"an image array must be uint8 [H, W], [H, W, 3] or [H, W, 4], got {image.dtype} "
                                    f"{list(image.shape)}")
                image = Image.fromarray(image)
            if not isinstance(image, Image.Image):
                raise EditError(f"an image is a path, a PIL image or a uint8 array, got {type(image).__name__}")
            try:
                jsonl.check_mode(image, "the input image")
            except jsonl.DataFormatError as e:
                raise EditError(str(e)) from None
            img = jsonl.to_rgb(image)
        return fit_image(img, self.session.config.data.resolution)

    def start(self, image) -> EditState:
        source = self.prepare(image)
        return EditState(self.session.start(source), 0, source)

    def turn(self, state: EditState, instruction: str, seed: int = 0) -> EditState:
        """One turn from `state` (left as it was) -> the state after it."""
        check_instruction(state.turn + 1, instruction)
        text, mask = self.session.embed([instruction])
        image, mem, _ = self.session.run_turn(state.memory, text, mask, state.turn + 1, seed)
        return EditState(mem, state.turn + 1, image)

    def edit(self, image, instructions: list[str], seed: int = 0) -> list[np.ndarray]:
        """The source, then one turn per instruction -> the images of turns 1..K, uint8 [H, W, 3] each."""
        if isinstance(instructions, str):
            raise EditError("instructions is a list of strings, one per turn, not a string")
        state, images = self.start(image), []
        for instruction in instructions:
            state = self.turn(state, instruction, seed)
            images.append(state.image)
        return images

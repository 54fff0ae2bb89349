"""Edit an image turn by turn with a trained AnchorEdit checkpoint (batch or interactive).

    python -m anchoredit_jax.edit --checkpoint runs/stage1_shapes --image in.png --out edits/ \\
        --instructions "make the circle red" "add a small blue star"
    python -m anchoredit_jax.edit --checkpoint runs/stage1_shapes --image in.png --out edits/ --interactive

--checkpoint is a training workdir (config.json + checkpoints/ or best/; --weights ema|params|best) or a
release folder (anchoredit_jax.release: one set of weights, --weights does not apply).
Sampler defaults (--steps, --sampler, --guidance, --shift) come from the run's `val` config section.

--method anchoredit (default): each turn is sampled from noise with the anchor memory (anchor +
window --window, default 4). --method mcie: training-free MCIE (anchoredit_jax/mcie.py): the
previous frame is inverted to noise (LQR --gamma), re-sampled with the dual-objective LQR toward
X_src + lam (X_prev - X_src) (--eta, --lam, --guided-frac) and attention highlighting
(--highlight-*). Alone it conditions on the previous frame only (window 1, no anchor); with
--window W it uses the anchor memory (anchor + W; --no-anchor drops the anchor). Its defaults
(--steps 8, --sampler fireflow and the MCIE flags) are the paper's; guidance and shift as above.

Image policy (the JSONL loader's, anchoredit_jax.data.jsonl): any size; RGB as is, grey (L, 1)
replicated, palette expanded, alpha (RGBA, LA, P+transparency) composited over white; 16-bit,
float, CMYK and other colour spaces are refused. The image is scaled to COVER the model
resolution (Lanczos) and centre-cropped to it; every output is at the model resolution.

Batch output in --out: turn_00_source.png (the cropped source), turn_01.png, ..., contact_sheet.png
(all turns with their instructions) and log.json (settings, seed, per-turn instruction and
seconds; the first turn includes compilation and is reported apart from the later ones).
--interactive: a prompt on stdin; an instruction makes a turn; :undo, :back K (turn K of the
current path, 0 = source), :goto ID (any node), :seed N, :history, :save, :quit (or EOF). Every
node keeps its anchor memory on the host, so undo/branching costs no recomputation; the tree is
written to history.json with node_<id>.png after every turn and at exit.
An empty instruction is refused (it would be the unconditional one): use a no-op phrase.
Randomness: the turn at depth k uses fold_in(PRNGKey(seed), k - 1), as editor.edit_sequence
does, so a path of the tree reproduces the batch run of its instructions bit for bit.
Errors print one line "error: ..." and exit with 1 (2 for bad flags). Existing files in --out are
never touched, except ours (turn_*/node_* PNGs, contact_sheet.png, log.json, history.json) with
--overwrite.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import os
import sys
import time
import warnings

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from PIL import Image
from tqdm import tqdm

from anchoredit_jax import checkpointing, editor, encoders, mcie, release, sampler
from anchoredit_jax import model as model_lib
from anchoredit_jax import text_encoder as te
from anchoredit_jax.data import jsonl
from anchoredit_jax.data.contact_sheet import save_contact_sheet
from anchoredit_jax.data.images import resolution_hw, to_float, to_uint8

NOOP_HINT = "use a no-op phrase like 'keep the image as it is'"
OUR_FILES = ("turn_*.png", "node_*.png", "contact_sheet.png", "log.json", "history.json")
HELP = (":undo  back one turn | :back K  turn K of the current path | :goto ID  any node | :seed N | "
        ":history | :save | :quit")


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


class EditError(Exception):
    """A user-facing problem: main() prints the message (no traceback) and exits with 1."""


# ----------------------------------------------------------------------------- inputs
def read_image(path: str) -> tuple[Image.Image, dict]:
    """-> (decoded RGB PIL image, {"size": [W, H], "mode"} of the file); EditError if unusable."""
    try:
        hdr = jsonl.open_image(path, "--image", "input")
        info = {"size": list(hdr.size), "mode": hdr.mode}
        hdr.close()
        return jsonl.decode_image(path, "--image", "input"), info
    except jsonl.DataFormatError as e:
        raise EditError(str(e)) from None


def fit_image(img: Image.Image, resolution) -> np.ndarray:
    """uint8 [H, W, 3] at the model resolution: cover-resize (Lanczos), centre crop."""
    return jsonl.fit_image(img, resolution_hw(resolution), mask=False)


def check_instructions(instructions: list[str]) -> None:
    for i, text in enumerate(instructions, 1):
        if te.is_null_instruction(text):
            raise EditError(f"instruction {i} is empty; the CLI refuses empty instructions (that is the "
                            f"unconditional one): {NOOP_HINT}")


def check_out_dir(out: str, overwrite: bool) -> None:
    """Refuses a non-empty --out without --overwrite; never touches anything at this point."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise EditError(f"--out {out} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise EditError(f"--out {out} exists and is not empty; choose another folder or pass --overwrite "
                        "(which replaces only this tool's own files)")


def make_out_dir(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for pattern in OUR_FILES:  # stale turns of an earlier, longer run would mislead; the user's files stay
        for path in glob.glob(os.path.join(out, pattern)):
            os.remove(path)


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"  # atomic: a crash mid-write never leaves a truncated log
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _save_png(img: np.ndarray, path: str) -> None:
    Image.fromarray(img).save(path)


# ----------------------------------------------------------------------------- model
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
                shift=shift, guidance=guidance)
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
                          guidance=s.guidance, shift=s.shift),
            method=args.method, **({"mcie": dataclasses.asdict(s)} if args.method == "mcie" else {}),
            seed=args.seed, warnings=self.warnings, turn_fn_cache_size=self.turn._cache_size(),
            memory_bytes=self.memory_bytes,
            device=str(self.device), jax_version=jax.__version__,
            timings=dict(load_s=self.load_s, first_turn_s_incl_compile=first, later_turn_median_s=steady,
                         later_turns=len(later), compile_estimate_s=None if steady is None else first - steady),
            **extra)


# ----------------------------------------------------------------------------- batch
def _sheet(images: list[np.ndarray], captions: list[str], path: str, per_row: int = 8) -> None:
    cells = list(zip(images, captions))
    save_contact_sheet([cells[i:i + per_row] for i in range(0, len(cells), per_row)], path)


def run_batch(sess: Session, args, source: np.ndarray, info: dict) -> None:
    # One at a time (all before the progress bar, with their warnings): the same [1, L] program as
    # the interactive mode, so a path of its tree reproduces this run bit for bit.
    embedded = [sess.embed([text]) for text in args.instructions]
    make_out_dir(args.out)
    _save_png(source, os.path.join(args.out, "turn_00_source.png"))
    mem = sess.start(source)
    images, turns, secs = [source], [], []
    for k in tqdm(range(1, len(args.instructions) + 1), desc="turns", unit="turn", file=sys.stderr):
        t0 = time.perf_counter()
        img, mem, s = sess.run_turn(mem, *embedded[k - 1], k, args.seed)
        name = f"turn_{k:02d}.png"
        _save_png(img, os.path.join(args.out, name))
        images.append(img)
        secs.append(s)
        turns.append(dict(turn=k, instruction=args.instructions[k - 1], image=name, turn_s=s,
                          total_s=time.perf_counter() - t0))
        write_json(os.path.join(args.out, "log.json"), sess.log(args, info, secs, turns=turns))
    _sheet(images, ["source"] + [f"{k}. {t}" for k, t in enumerate(args.instructions, 1)],
           os.path.join(args.out, "contact_sheet.png"))
    first, later = secs[0], secs[1:]
    print(f"{len(secs)} turns -> {args.out}: first turn {first:.2f}s (incl. compilation)"
          + (f", later turns {np.median(later):.3f}s each" if later else ""), file=sys.stderr)


# ----------------------------------------------------------------------------- interactive
@dataclasses.dataclass
class Node:
    id: int
    parent: int | None
    depth: int
    instruction: str | None
    image: str
    seed: int
    turn_s: float | None
    mem: object = dataclasses.field(repr=False)  # host AnchorMemory: continuing from here costs nothing
    pixels: np.ndarray = dataclasses.field(repr=False)


class History:
    """The edit tree of an interactive session and the commands that move around it."""

    def __init__(self, sess: Session, args, source: np.ndarray, info: dict):
        self.sess, self.args, self.info, self.seed = sess, args, info, args.seed
        mem = jax.device_get(sess.start(source))
        self.nodes = [Node(0, None, 0, None, "node_000.png", args.seed, None, mem, source)]
        self.current = 0
        _save_png(source, os.path.join(args.out, "node_000.png"))
        self.save()

    def path(self, node_id: int) -> list[Node]:
        out = []
        while node_id is not None:
            out.append(self.nodes[node_id])
            node_id = out[-1].parent
        return out[::-1]

    def edit(self, instruction: str) -> None:
        parent = self.nodes[self.current]
        text, mask = self.sess.embed([instruction])
        img, mem, s = self.sess.run_turn(parent.mem, text, mask, parent.depth + 1, self.seed)
        node = Node(len(self.nodes), parent.id, parent.depth + 1, instruction, f"node_{len(self.nodes):03d}.png",
                    self.seed, s, jax.device_get(mem), img)
        _save_png(img, os.path.join(self.args.out, node.image))
        self.nodes.append(node)
        self.current = node.id
        self.save(write_sheet=False)
        print(f"turn {node.depth} -> node {node.id} ({node.image}, {s:.3f}s)")

    def tree(self) -> str:
        lines = []

        def walk(n: Node):
            what = "source" if n.instruction is None else repr(n.instruction)
            mark = "  <- current" if n.id == self.current else ""
            lines.append(f"{'  ' * n.depth}[{n.id}] {what} ({n.image}){mark}")
            for c in self.nodes:
                if c.parent == n.id:
                    walk(c)

        walk(self.nodes[0])
        return "\n".join(lines)

    def save(self, write_sheet: bool = True) -> None:
        nodes = [dict(id=n.id, parent=n.parent, depth=n.depth, instruction=n.instruction, image=n.image,
                      seed=n.seed, turn_s=n.turn_s) for n in self.nodes]
        secs = [n.turn_s for n in self.nodes[1:]]
        log = self.sess.log(self.args, self.info, secs, current=self.current, nodes=nodes)
        write_json(os.path.join(self.args.out, "history.json"), log)
        if write_sheet:  # the current path, source first
            path = self.path(self.current)
            write_json(os.path.join(self.args.out, "log.json"), log)
            _sheet([n.pixels for n in path], ["source"] + [f"{n.depth}. {n.instruction}" for n in path[1:]],
                   os.path.join(self.args.out, "contact_sheet.png"))

    def command(self, line: str) -> bool:
        """Runs one input line; False means quit."""
        cmd, *rest = line.split()
        arg = rest[0] if rest else ""
        if cmd == ":quit":
            return False
        if cmd == ":undo":
            parent = self.nodes[self.current].parent
            print("nothing to undo: at the source" if parent is None else f"back to node {parent}")
            self.current = self.current if parent is None else parent
        elif cmd in (":back", ":goto") and arg.isdigit():
            k, path = int(arg), self.path(self.current)
            if cmd == ":back" and k < len(path):  # turn k of the current path
                self.current = path[k].id
            elif cmd == ":goto" and k < len(self.nodes):  # any node, by id (see :history)
                self.current = k
            else:
                print(f"no {'turn' if cmd == ':back' else 'node'} {k} (current path: turns 0..{len(path) - 1}, "
                      f"nodes 0..{len(self.nodes) - 1})")
                return True
            print(f"at node {self.current} (turn {self.nodes[self.current].depth}); the next instruction "
                  "branches from here")
        elif cmd == ":seed" and arg.lstrip("-").isdigit():
            self.seed = int(arg)
            print(f"seed {self.seed} for the next turns")
        elif cmd == ":history":
            print(self.tree())
        elif cmd == ":save":
            self.save()
            print(f"saved history.json, log.json and contact_sheet.png in {self.args.out}")
        else:
            print(f"unknown command {line.strip()!r}; {HELP}")
        return True


def run_interactive(sess: Session, args, source: np.ndarray, info: dict) -> None:
    make_out_dir(args.out)
    hist = History(sess, args, source, info)
    for text in args.instructions:
        hist.edit(text)
    print(f"instructions make turns; {HELP}")
    try:
        while True:
            n = hist.nodes[hist.current]
            print(f"[turn {n.depth}, node {n.id}]> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:  # EOF
                print()
                break
            if line.strip().startswith(":"):
                if not hist.command(line.strip()):
                    break
            elif te.is_null_instruction(line):
                print(f"empty instruction refused: {NOOP_HINT}")
            else:
                hist.edit(line.strip())
    finally:  # also on Ctrl-C: the tree so far is kept
        hist.save()
        print(f"{len(hist.nodes) - 1} turns; history in {os.path.join(args.out, 'history.json')}")


# ----------------------------------------------------------------------------- entry point
def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m anchoredit_jax.edit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="training workdir")
    ap.add_argument("--weights", default="ema", choices=("ema", "params", "best"))
    ap.add_argument("--image", required=True, help="source image, any size/mode (policy above)")
    ap.add_argument("--instructions", nargs="*", default=[], help="one per turn (interactive: run first)")
    ap.add_argument("--out", required=True, help="output folder (new or empty, or --overwrite)")
    ap.add_argument("--method", choices=METHODS, default="anchoredit", help="editing method (see above)")
    ap.add_argument("--window", type=int, default=None,
                    help="memory window W (last W turns besides the anchor); default 4, with --method mcie 1 "
                         "without anchor")
    ap.add_argument("--no-anchor", action="store_true", help="ablation: no anchor slot, window only")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"sampler steps per turn (default: config val; mcie: {MCIE_DEFAULTS.num_steps})")
    ap.add_argument("--sampler", choices=sampler.METHODS, default=None,
                    help=f"default: config val; mcie: {MCIE_DEFAULTS.method} "
                         f"(an ODE solver: {', '.join(mcie.SOLVERS)})")
    ap.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    ap.add_argument("--shift", type=float, default=None, help="timestep shift")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae", default="", help="override the run config's vae.workdir")
    ap.add_argument("--interactive", action="store_true", help="prompt loop on stdin")
    ap.add_argument("--overwrite", action="store_true", help="allow a non-empty --out (only our files replaced)")
    g = ap.add_argument_group("MCIE (--method mcie; defaults from mcie.MCIESettings)")
    for flag, field, kind, what in MCIE_FLAGS:
        default = getattr(MCIE_DEFAULTS, field)
        pair = isinstance(default, tuple)
        g.add_argument(flag, type=kind, default=None, nargs=2 if pair else None, metavar=("LO", "HI") if pair else None,
                       help=f"{what} (default {default})")
    args = ap.parse_args(argv)
    for flag, v in (("--window", args.window), ("--steps", args.steps)):
        if v is not None and v < 1:
            ap.error(f"{flag} must be >= 1, got {v}")
    if args.shift is not None and args.shift <= 0:
        ap.error(f"--shift must be > 0, got {args.shift}")
    given = [flag for flag, field, _, _ in MCIE_FLAGS if getattr(args, field) is not None]
    if args.method != "mcie" and given:
        ap.error(f"{given[0]} is an MCIE option; add --method mcie")
    if args.method == "mcie":
        if args.sampler is not None and args.sampler not in mcie.SOLVERS:
            ap.error(f"--method mcie inverts with an ODE solver: --sampler must be one of {', '.join(mcie.SOLVERS)}, "
                     f"got {args.sampler!r}")
        try:
            mcie_settings(args, guidance=1.0, shift=1.0)
        except ValueError as e:
            ap.error(str(e))
    return args


def main(argv=None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 error, 2 bad flags)."""
    checkpointing.quiet_orbax_logging()
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse already printed the message
        return int(e.code or 0)
    try:
        if not args.instructions and not args.interactive:
            raise EditError("no instructions: give --instructions \"...\" (one per turn) or --interactive")
        check_instructions(args.instructions)
        check_out_dir(args.out, args.overwrite)  # every check before writing anything
        img, info = read_image(args.image)  # before the (slow) model load
        sess = Session(args)
        if not sess.config.data.get("resolution"):
            raise EditError(f"{args.checkpoint}/config.json has no data.resolution: the model resolution is unknown")
        source = fit_image(img, sess.config.data.resolution)
        (run_interactive if args.interactive else run_batch)(sess, args, source, info)
    except EditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

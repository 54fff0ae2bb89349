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
seconds; the first turn includes compilation and is reported apart from the later ones); with
--profile, a jax.profiler trace of turns 2 onwards in profile/ (each turn a `turn` step).
--interactive: a prompt on stdin; an instruction makes a turn; :undo, :back K (turn K of the
current path, 0 = source), :goto ID (any node), :seed N, :history, :save, :quit (or EOF). Every
node keeps its anchor memory on the host, so undo/branching costs no recomputation; the tree is
written to history.json with node_<id>.png after every turn and at exit.
An empty instruction is refused (it would be the unconditional one): use a no-op phrase.
Randomness: the turn at depth k uses fold_in(PRNGKey(seed), k - 1), as editor.edit_sequence
does, so a path of the tree reproduces the batch run of its instructions bit for bit.
The checkpoint, encoders and compiled turn live in anchoredit_jax/edit_session.py (`Session`).
Errors print one line "error: ..." and exit with 1 (2 for bad flags). Existing files in --out are
never touched, except ours (turn_*/node_* PNGs, contact_sheet.png, log.json, history.json; a new
trace in profile/) with --overwrite.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import sys
import time

import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from anchoredit_jax import checkpointing, compile_cache, mcie, sampler
from anchoredit_jax import text_encoder as te
from anchoredit_jax.data.contact_sheet import save_contact_sheet
from anchoredit_jax.edit_session import (MCIE_DEFAULTS, MCIE_FLAGS, METHODS, NOOP_HINT, OPTIONS, EditError, Session,
                                         check_instruction, check_options, fit_image, read_image)

OUR_FILES = ("turn_*.png", "node_*.png", "contact_sheet.png", "log.json", "history.json")
HELP = (":undo  back one turn | :back K  turn K of the current path | :goto ID  any node | :seed N | "
        ":history | :save | :quit")


# ----------------------------------------------------------------------------- inputs
def check_instructions(instructions: list[str]) -> None:
    for i, text in enumerate(instructions, 1):
        check_instruction(i, text)


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
    with contextlib.ExitStack() as stack:  # ends the trace however the loop ends
        for k in tqdm(range(1, len(args.instructions) + 1), desc="turns", unit="turn", file=sys.stderr):
            if args.profile and k == 2:
                stack.enter_context(jax.profiler.trace(os.path.join(args.out, "profile")))
            t0 = time.perf_counter()
            with jax.profiler.StepTraceAnnotation("turn", step_num=k):
                img, mem, s = sess.run_turn(mem, *embedded[k - 1], k, args.seed)  # img on the host: turn done
            name = f"turn_{k:02d}.png"
            _save_png(img, os.path.join(args.out, name))
            images.append(img)
            secs.append(s)
            turns.append(dict(turn=k, instruction=args.instructions[k - 1], image=name, turn_s=s,
                              total_s=time.perf_counter() - t0))
            write_json(os.path.join(args.out, "log.json"), sess.log(args, info, secs, turns=turns))
    if args.profile:
        print(f"profile of turns 2-{len(secs)}: {os.path.join(args.out, 'profile')} (TensorBoard's profile plugin "
              "or its trace.json.gz in ui.perfetto.dev)", file=sys.stderr)
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
    ap.add_argument("--weights", choices=("ema", "params", "best"))
    ap.add_argument("--image", required=True, help="source image, any size/mode (policy above)")
    ap.add_argument("--instructions", nargs="*", default=[], help="one per turn (interactive: run first)")
    ap.add_argument("--out", required=True, help="output folder (new or empty, or --overwrite)")
    ap.add_argument("--method", choices=METHODS, help="editing method (see above)")
    ap.add_argument("--window", type=int,
                    help="memory window W (last W turns besides the anchor); default 4, with --method mcie 1 "
                         "without anchor")
    ap.add_argument("--no-anchor", action="store_true", help="ablation: no anchor slot, window only")
    ap.add_argument("--steps", type=int,
                    help=f"sampler steps per turn (default: config val; mcie: {MCIE_DEFAULTS.num_steps})")
    ap.add_argument("--sampler", choices=sampler.METHODS,
                    help=f"default: config val; mcie: {MCIE_DEFAULTS.method} "
                         f"(an ODE solver: {', '.join(mcie.SOLVERS)})")
    ap.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    ap.add_argument("--shift", type=float, help="timestep shift")
    ap.add_argument("--anchor-weight", type=float,
                    help="the anchor's share of attention, weighed (1: as trained; 0.5 keeps earlier edits "
                         "better and the subject a little less, docs/persistence.md)")
    ap.add_argument("--anchor-gate", type=float,
                    help="with --anchor-weight: weigh only the anchor tokens the newest frame has not changed "
                         "(mean squared latent distance from the source below this; e.g. 0.2)")
    ap.add_argument("--latest-weight", type=float,
                    help="the newest frame's share of attention, weighed (1: as trained; 2 keeps more of the "
                         "last edits and a little less of the subject, docs/persistence.md)")
    ap.add_argument("--edit-region", type=float,
                    help="keep the previous frame outside the region the instruction changes: the latent tokens "
                         "where the turn differs from a sample with the null instruction by more than this mean "
                         "squared distance (e.g. 0.3; twice the sampling per turn; docs/persistence.md)")
    ap.add_argument("--outside-mix", type=float,
                    help="with --edit-region: the share of the new sample taken outside the region (0: the "
                         "previous frame exactly; 0.2 keeps most edits and lets the anchor mend the rest)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae", help="override the run config's vae.workdir")
    ap.add_argument("--interactive", action="store_true", help="prompt loop on stdin")
    ap.add_argument("--overwrite", action="store_true", help="allow a non-empty --out (only our files replaced)")
    ap.add_argument("--profile", action="store_true",
                    help="batch mode: a jax.profiler trace of turns 2 onwards (turn 1 compiles) in OUT/profile")
    g = ap.add_argument_group("MCIE (--method mcie; defaults from mcie.MCIESettings)")
    for flag, field, kind, what in MCIE_FLAGS:
        default = getattr(MCIE_DEFAULTS, field)
        pair = isinstance(default, tuple)
        g.add_argument(flag, type=kind, nargs=2 if pair else None, metavar=("LO", "HI") if pair else None,
                       help=f"{what} (default {default})")
    ap.set_defaults(**OPTIONS)  # one source of the defaults, shared with the Editor
    args = ap.parse_args(argv)
    if args.profile and (args.interactive or len(args.instructions) < 2):
        ap.error("--profile traces the batch turns after the first (which compiles): give 2 or more "
                 "--instructions, without --interactive")
    try:
        check_options(args)
    except ValueError as e:
        ap.error(str(e))
    return args


def main(argv=None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 error, 2 bad flags)."""
    checkpointing.quiet_logging()
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse already printed the message
        return int(e.code or 0)
    compile_cache.enable()  # after the flags: --help or a bad flag makes no cache folder
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

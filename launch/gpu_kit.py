"""Prepare what a run on the lent GPU carries, within its 64 MiB (the whole working tree included):

    python launch/gpu_kit.py               # .gpu/pkgs: compact MiniLM; .whl: grain, ml_collections, ...
    python launch/gpu_kit.py --diffusers   # .whl-diffusers: with diffusers, for benchmarks/train_throughput.py

    python launch/gpu_kit.py --init out/shapes_stage1   # also .gpu/init: stage-1 weights to continue from

then in the device run carry [".gpu", ".whl"] and run `launch/gpu_shapes_w256.sh` (it installs .whl
and puts .gpu/pkgs first on PYTHONPATH; with INIT=.gpu/init it first expands the weights with
`python3 launch/gpu_kit.py --expand .gpu/init runs/gpu_w256_init` and continues from them); for the
throughput comparison carry [".whl-diffusers"] alone (it needs no text encoder, and with diffusers'
wheels both would not fit; the two kits live side by side, so the second run can follow the first
while the machine is still warm). The full MiniLM package is 91 MB and cannot travel; its compact copy
(text_encoder.compact_state_dict: int8 matrices, the word-embedding rows of the tokens ShapesEdit's
instructions use) is 11.6 MiB; the width-256 DiT as int8 (anchoredit_jax.quantize, groups of 64) is
9.2 MiB, against 13.4 MiB as a bfloat16 release (16.8 MiB with its VAE, which is in the tree). The
script prints how far the compact encoder's states and the int8 weights are from the originals, and
the size that would travel (git's tracked and untracked, not ignored files plus the carried
folders) against the limit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from anchoredit_jax import quantize  # noqa: E402
from anchoredit_jax import text_encoder as te  # noqa: E402
from anchoredit_jax.data.shapes_edit import SPLITS, generate_sequence  # noqa: E402

LIMIT_MIB = 64
WHEELS = ("grain==0.2.18", "array-record", "ml_collections==1.1.0", "portpicker", "importlib_metadata",
          "importlib_resources")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
SPECIAL = (0, 100, 101, 102)  # [PAD] [UNK] [CLS] [SEP]


def instructions(seeds: range, turns: int = 30) -> list[str]:
    out = set()
    for split in SPLITS:
        for seed in seeds:
            out.update(generate_sequence(seed, turns, 64, split=split).instructions)
    return sorted(out)


def build_encoder(dest: str, sequences: int) -> None:
    from safetensors.numpy import load_file, save_file

    src = te.default_model_dir()
    if te.kept_token_ids(str(src)) is not None:
        sys.exit(f"error: {src} is itself a compact copy: run without .gpu/pkgs on PYTHONPATH")
    ids, _ = te.tokenize(instructions(range(sequences)), max_length=64, model_dir=src)
    keep = sorted(set(np.unique(ids).tolist()) | set(SPECIAL))
    model = os.path.join(dest, te.PACKAGE, "model")
    shutil.rmtree(os.path.join(dest, te.PACKAGE), ignore_errors=True)
    os.makedirs(model)
    with open(os.path.join(dest, te.PACKAGE, "__init__.py"), "w") as f:
        f.write('"""Compact MiniLM-L6 for transfer-limited machines (launch/gpu_kit.py)."""\n')
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(src / name, os.path.join(model, name))
    save_file(te.compact_state_dict(load_file(str(src / "model.safetensors")), keep),
              os.path.join(model, "model.safetensors"))
    print(f"compact MiniLM: {len(keep)} of the vocabulary's token rows (from {sequences} sequences x 30 turns "
          f"in each of {len(SPLITS)} splits), {_mib(model):.1f} MiB -> {model}")


def check_encoder(dest: str, sequences: int) -> None:
    """States of the compact and the full encoder on instructions of other seeds, valid tokens only."""
    texts = instructions(range(10_000, 10_000 + max(sequences // 10, 20)), turns=10)[:512]
    full, small = te.TextEncoder.load(), te.TextEncoder.load(model_dir=os.path.join(dest, te.PACKAGE, "model"))
    a, mask = full.encode(texts)
    b, _ = small.encode(texts)
    m = np.asarray(mask, bool)
    a, b = np.asarray(a)[m], np.asarray(b)[m]
    rel = np.linalg.norm(a - b, axis=-1) / np.linalg.norm(a, axis=-1)
    cos = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    print(f"compact vs full encoder on {len(texts)} unseen instructions ({m.sum()} tokens): relative error "
          f"median {np.median(rel):.4f}, max {rel.max():.4f}; cosine min {cos.min():.5f}")


def build_init(src: str, dest: str, vae: str = "weights/shapes_stage3/vae") -> None:
    """Stage-1 weights to continue from, as int8 (`dest`/dit.safetensors + config.json + release.json).

    The VAE does not travel: `vae` (a path in the tree, relative to the repository) must encode as
    the source's did, and the expanded folder names it."""
    import flax
    from safetensors.numpy import save_file

    from anchoredit_jax import checkpointing, release

    config, _, params = checkpointing.load_trained(src)
    release.check_same_latent_space(config.vae.workdir, os.path.join(ROOT, vae))
    flat = {k: np.asarray(v, np.float32) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
    # the large matrices only: biases, norms and modulation tables (stacked over blocks, so 2-D too)
    # are a few hundred kB and keep float32
    small = quantize.compact(flat, min_size=2**16)
    back = quantize.expand(small)
    err = max(np.linalg.norm(back[k] - v) / max(np.linalg.norm(v), 1e-12) for k, v in flat.items())
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    save_file(small, os.path.join(dest, "dit.safetensors"))
    config.vae.workdir = vae
    with open(os.path.join(dest, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    info = {"kit_of": os.path.normpath(src), "int8_group": 64, "step": checkpointing.trained_step(src)}
    with open(os.path.join(dest, "release.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(f"stage-1 weights of {src} as int8: {len(flat)} tensors, {_mib(dest):.1f} MiB -> {dest}; "
          f"largest relative error of a tensor {err:.4f}")


def expand_init(kit: str, out: str) -> None:
    """A kit made by build_init -> a float32 release folder at `out` (for --config.init_from)."""
    import flax
    import orbax.checkpoint as ocp
    from safetensors.numpy import load_file

    from anchoredit_jax import release

    if os.path.exists(out):
        sys.exit(f"error: {out} exists; the weights are expanded to a new folder")
    params = flax.traverse_util.unflatten_dict(quantize.expand(load_file(os.path.join(kit, "dit.safetensors"))),
                                               sep="/")
    with open(os.path.join(kit, "config.json")) as f:
        config = json.load(f)
    config["vae"]["workdir"] = os.path.relpath(os.path.join(ROOT, config["vae"]["workdir"]), out)
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with ocp.StandardCheckpointer() as ck:
        ck.save(os.path.abspath(os.path.join(tmp, release.DIT)), params)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    shutil.copy(os.path.join(kit, "release.json"), os.path.join(tmp, "release.json"))
    os.rename(tmp, out)
    print(f"expanded {kit} -> {out}")


def download_wheels(dest: str, extra: tuple[str, ...]) -> None:
    os.makedirs(dest, exist_ok=True)
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *plat, "-d", dest, *WHEELS, *extra],
                   check=True)
    print(f"wheels: {len(os.listdir(dest))} files, {_mib(dest):.1f} MiB -> {dest}")


def _mib(path: str) -> float:
    if os.path.isfile(path):
        return os.path.getsize(path) / 2**20
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2**20


def ignore_locally(*folders: str) -> None:
    """Carried folders must be ignored (.git/info/exclude), or they travel twice."""
    path = os.path.join(ROOT, ".git", "info", "exclude")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    have = open(path).read().split() if os.path.exists(path) else []
    with open(path, "a") as f:
        f.writelines(f"/{d}/\n" for d in folders if f"/{d}/" not in have)


def travel_mib(carry: list[str]) -> float:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    files = [f for f in files if f and not any(f == c or f.startswith(c.rstrip("/") + "/") for c in carry)]
    tree = sum(os.path.getsize(os.path.join(ROOT, f)) for f in files if os.path.isfile(os.path.join(ROOT, f)))
    return tree / 2**20 + sum(_mib(os.path.join(ROOT, c)) for c in carry if os.path.exists(os.path.join(ROOT, c)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python launch/gpu_kit.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=300, help="ShapesEdit sequences per split to collect tokens from")
    ap.add_argument("--diffusers", action="store_true",
                    help="for the throughput run: the wheels with diffusers', no encoder")
    ap.add_argument("--no-wheels", action="store_true", help="only the compact encoder (no download)")
    ap.add_argument("--carry", nargs="*", default=[], help="more carried paths to count (e.g. out/shapes_stage1)")
    ap.add_argument("--init", default="", help="also .gpu/init: these stage-1 weights (release or workdir) as int8")
    ap.add_argument("--expand", nargs=2, metavar=("KIT", "OUT"),
                    help="on the device: write the kit's weights as a release folder OUT, and nothing else")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as e:  # a missing or mismatched --init / --expand source
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args) -> int:
    if args.expand:
        expand_init(*args.expand)
        return 0
    wheels = ".whl-diffusers" if args.diffusers else ".whl"  # both kits ready, for two runs back to back
    ignore_locally(".gpu", ".whl", ".whl-diffusers")
    if args.init:
        build_init(args.init, os.path.join(ROOT, ".gpu", "init"))
    elif not args.diffusers:
        shutil.rmtree(os.path.join(ROOT, ".gpu", "init"), ignore_errors=True)  # a stale one would travel
    if not args.diffusers:
        build_encoder(os.path.join(ROOT, ".gpu", "pkgs"), args.sequences)
        check_encoder(os.path.join(ROOT, ".gpu", "pkgs"), args.sequences)
    if not args.no_wheels:
        shutil.rmtree(os.path.join(ROOT, wheels), ignore_errors=True)  # this kit's wheels, not an older one's too
        download_wheels(os.path.join(ROOT, wheels), ("diffusers==0.42.1",) if args.diffusers else ())
    carry = [wheels, *args.carry] if args.diffusers else [".gpu", wheels, *args.carry]
    total = travel_mib(carry)
    print(f"would travel: {total:.1f} MiB of {LIMIT_MIB} (the working tree plus {', '.join(carry)})"
          + ("" if total <= LIMIT_MIB else " -- OVER THE LIMIT: carry less"))
    return 0 if total <= LIMIT_MIB else 1


if __name__ == "__main__":
    sys.exit(main())

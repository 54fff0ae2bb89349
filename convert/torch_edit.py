"""Multi-turn editing in PyTorch (CPU or CUDA) from an exported folder (convert/export_model.py).

    python convert/torch_edit.py --model served/ --image in.png --out edits/ \\
        --instructions "make the background mint" "remove the star" [--device cuda --dtype bfloat16]

The same edit as `python -m anchoredit_jax.edit` (memory, samplers, guidance: convert/torch_serving.py),
with the same image policy; settings default to the folder's anchoredit.json. Noise comes from a
torch.Generator seeded with --seed (drawn per turn in order), so runs repeat on one device but do not
reproduce the JAX CLI's images bit for bit: parity with JAX is tested by feeding both the same noise
(tests/test_torch_serving.py). Writes turn_00_source.png, turn_KK.png, contact_sheet.png, log.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

if __package__ in (None, ""):  # run as a script: make `convert` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from anchoredit_jax import edit as jax_edit  # noqa: E402  (image policy, checks: one copy)
from anchoredit_jax.data.contact_sheet import save_contact_sheet  # noqa: E402
from anchoredit_jax.data.images import to_float, to_uint8  # noqa: E402
from anchoredit_jax.edit_session import OPTIONS, check_options  # noqa: E402
from convert import torch_serving as ts  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_flags(args) -> None:
    """The flags this CLI shares with the JAX edit, by its rules and messages (one ValueError)."""
    shared = ("window", "steps", "shift", "anchor_weight", "anchor_gate", "latest_weight", "edit_region",
              "outside_mix")
    check_options(types.SimpleNamespace(**{**OPTIONS, **{f: getattr(args, f) for f in shared}}))


def run(args) -> dict:
    jax_edit.check_instructions(args.instructions)
    check_flags(args)
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        raise jax_edit.EditError(f"--out {args.out} exists and is not empty; choose a new folder")
    img, info = jax_edit.read_image(args.image)
    t0 = time.perf_counter()
    served = ts.load_served(args.model, device=args.device, dtype=DTYPES[args.dtype])
    settings = dataclasses.replace(served.settings, **{k: v for k, v in dict(
        num_steps=args.steps, method=args.sampler, guidance=args.guidance, shift=args.shift,
        anchor_weight=args.anchor_weight, anchor_gate=args.anchor_gate, latest_weight=args.latest_weight,
        edit_region=args.edit_region, outside_mix=args.outside_mix).items()
        if v is not None})
    if args.anchor_weight is not None and not served.keep_anchor:
        raise ValueError(f"--anchor-weight weighs the anchor, and {args.model}'s memory has none")
    window = args.window or served.window
    load_s = time.perf_counter() - t0
    source = jax_edit.fit_image(img, served.resolution)
    os.makedirs(args.out, exist_ok=True)
    Image.fromarray(source).save(os.path.join(args.out, "turn_00_source.png"))

    dev = args.device
    x = torch.from_numpy(to_float(source[None])).permute(0, 3, 1, 2).to(dev)
    null_t, null_m = served.text.null(1)
    mem = ts.start(served.dit, served.vae.encode(x), null_t, null_m, window=window, keep_anchor=served.keep_anchor)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    images, turns = [source], []
    for k, instruction in enumerate(args.instructions, 1):
        t0 = time.perf_counter()
        text, mask = served.text.encode([instruction])
        noise = torch.randn((1,) + mem.latent_shape, generator=gen, device=dev)
        step_noise = (torch.randn((settings.num_steps, 1) + mem.latent_shape, generator=gen, device=dev)
                      if settings.method == "consistency" else None)
        latent, mem = ts.edit_turn(served.dit, settings, mem, text, mask, null_t, null_m, noise, step_noise)
        out = to_uint8(served.vae.decode(latent).permute(0, 2, 3, 1).cpu().numpy())[0]
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        name = f"turn_{k:02d}.png"
        Image.fromarray(out).save(os.path.join(args.out, name))
        images.append(out)
        turns.append(dict(turn=k, instruction=instruction, image=name, turn_s=time.perf_counter() - t0))
        print(f"turn {k}: {name} ({turns[-1]['turn_s']:.3f}s)", file=sys.stderr)
    captions = ["source"] + [f"{k}. {t}" for k, t in enumerate(args.instructions, 1)]
    save_contact_sheet([list(zip(images, captions))[i:i + 8] for i in range(0, len(images), 8)],
                       os.path.join(args.out, "contact_sheet.png"))
    log = dict(model=os.path.abspath(args.model), image=os.path.abspath(args.image), input_image=info,
               device=dev, dtype=args.dtype, seed=args.seed, window=window, anchor=served.keep_anchor,
               settings=dataclasses.asdict(settings), load_s=load_s, turns=turns, torch_version=torch.__version__)
    with open(os.path.join(args.out, "log.json"), "w") as f:
        json.dump(log, f, indent=2)
    return log


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="exported folder (anchoredit.json, transformer/, vae/)")
    ap.add_argument("--image", required=True)
    ap.add_argument("--out", required=True, help="new (or empty) output folder")
    ap.add_argument("--instructions", nargs="+", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES), help="DiT compute dtype (VAE: float32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, help="memory window (default: anchoredit.json)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--sampler", choices=("euler", "midpoint", "fireflow", "consistency"))
    ap.add_argument("--guidance", type=float)
    ap.add_argument("--shift", type=float)
    ap.add_argument("--anchor-weight", type=float, help="the anchor's share of attention, weighed (as the JAX edit)")
    ap.add_argument("--anchor-gate", type=float, help="with --anchor-weight: only on the tokens the newest frame "
                                                      "left unchanged (as the JAX edit)")
    ap.add_argument("--latest-weight", type=float, help="the newest frame's share of attention, weighed (as the JAX "
                                                        "edit)")
    ap.add_argument("--edit-region", type=float, help="keep the previous frame outside the tokens the instruction "
                                                      "changes by more than this (as the JAX edit)")
    ap.add_argument("--outside-mix", type=float, help="with --edit-region: the share of the new sample taken outside "
                                                      "the region (as the JAX edit)")
    args = ap.parse_args(argv)
    try:
        run(args)
    except (jax_edit.EditError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

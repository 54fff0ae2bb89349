"""Store docs/ pictures as lossless WebP and point the Markdown at them.

    python docs/to_webp.py                       # every tracked PNG under docs/
    python docs/to_webp.py docs/results/new      # a folder or files just copied in

Why: the whole working tree travels to the lent GPU within 64 MiB (launch/README.md), and lossless
WebP stores these contact sheets and plots in about three quarters of the PNG's bytes. Every picture
is decoded again and compared pixel for pixel with its PNG before the PNG is deleted; a picture
that would not shrink, or would not come back identical, stays a PNG. References in tracked
Markdown files (written from the repository root or relative to the file) are rewritten; the
command prints what it changed. `git add -A docs` afterwards.

    python docs/to_webp.py --lossy 90 docs/results/edit_by_type    # contact sheets kept for the record

stores pictures (PNG or WebP) as lossy WebP at that quality instead, each only where it comes out
at most `--max-ratio` of its bytes and within `--min-psnr` dB of the picture it replaces (so plots,
whose lines and text suffer first, stay lossless): about 37 dB and 60% of the bytes for the
contact sheets. For pictures whose detail is the point (the VAE's reconstructions), stay lossless.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lossless_webp(path: str) -> bytes | None:
    """The picture at `path` as lossless WebP bytes, or None unless smaller and pixel-identical."""
    with Image.open(path) as im:
        im.load()
        alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
        im = im.convert("RGBA" if alpha else "RGB")
    buf = io.BytesIO()
    im.save(buf, "WEBP", lossless=True, quality=100, method=6)
    with Image.open(io.BytesIO(buf.getvalue())) as back:
        same = np.array_equal(np.asarray(back.convert(im.mode)), np.asarray(im))
    return buf.getvalue() if same and buf.tell() < os.path.getsize(path) else None


def lossy_webp(path: str, quality: int, max_ratio: float, min_psnr: float) -> tuple[bytes | None, float]:
    """The picture at `path` as lossy WebP bytes and their PSNR against it (dB); the bytes are None
    unless at most max_ratio of the file's size and at least min_psnr dB."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "WEBP", quality=quality, method=6)
    with Image.open(io.BytesIO(buf.getvalue())) as back:
        err = np.mean((np.asarray(back.convert("RGB"), np.float64) - rgb) ** 2)
    psnr = float("inf") if err == 0 else 10 * np.log10(255.0 ** 2 / err)
    ok = buf.tell() <= max_ratio * os.path.getsize(path) and psnr >= min_psnr
    return (buf.getvalue() if ok else None), psnr


def tracked(*paths: str) -> list[str]:
    """Tracked files that are there (a file added and since renamed by a pass is still in the index)."""
    out = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode()
    return [p for p in out.split("\0") if p and os.path.exists(os.path.join(ROOT, p))]


def rewrite_references(renamed: dict[str, str]) -> None:
    """Replaces each old path in tracked .md files, root-relative or relative to the file."""
    for md in tracked("*.md"):
        text = original = open(os.path.join(ROOT, md)).read()
        for old, new in renamed.items():
            for o, n in {(old, new), (os.path.relpath(old, os.path.dirname(md) or "."),
                                      os.path.relpath(new, os.path.dirname(md) or "."))}:
                text = re.sub(r"(?<![\w/.-])" + re.escape(o) + r"(?!\w|\.\w)", n, text)
        if text != original:
            with open(os.path.join(ROOT, md), "w") as f:
                f.write(text)
            print(f"references updated: {md}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", default=["docs"], help="files or folders (default: docs)")
    ap.add_argument("--lossy", type=int, metavar="Q", help="lossy WebP at quality Q (1-100) instead")
    ap.add_argument("--max-ratio", type=float, default=0.8, help="--lossy: replace only if at most this share of the bytes")
    ap.add_argument("--min-psnr", type=float, default=35.0, help="--lossy: replace only if at least this close (dB)")
    args = ap.parse_args(argv)
    if args.lossy is None:
        def encode_lossless(path):
            data = lossless_webp(path)
            return data, "pixel-identical" if data else "not smaller, or not pixel-identical"
        return replace(args.paths, (".png",), encode_lossless, "lossless WebP")
    if not 1 <= args.lossy <= 100:
        ap.error(f"--lossy: a quality from 1 to 100, not {args.lossy}")

    def encode_lossy(path):
        data, psnr = lossy_webp(path, args.lossy, args.max_ratio, args.min_psnr)
        return data, f"{psnr:.1f} dB"
    return replace(args.paths, (".png", ".webp"), encode_lossy, f"lossy WebP at quality {args.lossy}")


def replace(paths: list[str], suffixes: tuple[str, ...], encode, what: str) -> int:
    """Each tracked picture under `paths` ending in `suffixes` -> encode(path) = (WebP bytes or None, note);
    where bytes come back they replace it as .webp (a PNG is removed, the Markdown naming it rewritten)."""
    renamed, count, before, after = {}, 0, 0, 0
    for pic in (p for p in tracked(*paths) if p.endswith(suffixes)):
        data, note = encode(os.path.join(ROOT, pic))
        if data is None:
            print(f"kept: {pic} ({note})")
            continue
        webp = os.path.splitext(pic)[0] + ".webp"
        count, before, after = count + 1, before + os.path.getsize(os.path.join(ROOT, pic)), after + len(data)
        with open(os.path.join(ROOT, webp), "wb") as f:
            f.write(data)
        if webp != pic:
            os.remove(os.path.join(ROOT, pic))
            renamed[pic] = webp
        print(f"{what}: {webp} ({note})")
    rewrite_references(renamed)
    print(f"{count} pictures: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB as {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

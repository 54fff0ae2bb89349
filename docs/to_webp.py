"""Store docs/ pictures as lossless WebP and point the Markdown at them.

    python docs/to_webp.py                       # every tracked PNG under docs/
    python docs/to_webp.py docs/results/new      # a folder or files just copied in

Why: the whole working tree travels to the lent GPU within 64 MiB (launch/README.md), and lossless
WebP stores these contact sheets and plots in about three quarters of the PNG's bytes. Every picture
is decoded again and compared pixel for pixel with its PNG before the PNG is deleted; a picture
that would not shrink, or would not come back identical, stays a PNG. References in tracked
Markdown files (written from the repository root or relative to the file) are rewritten; the
command prints what it changed. `git add -A docs` afterwards.
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


def tracked(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode()
    return [p for p in out.split("\0") if p]


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
    args = ap.parse_args(argv)
    renamed, before, after = {}, 0, 0
    for png in (p for p in tracked(*args.paths) if p.endswith(".png")):
        data = lossless_webp(os.path.join(ROOT, png))
        if data is None:
            print(f"kept as PNG: {png}")
            continue
        webp = png[:-4] + ".webp"
        with open(os.path.join(ROOT, webp), "wb") as f:
            f.write(data)
        before += os.path.getsize(os.path.join(ROOT, png))
        after += len(data)
        os.remove(os.path.join(ROOT, png))
        renamed[png] = webp
    rewrite_references(renamed)
    print(f"{len(renamed)} pictures: {before / 2**20:.1f} MiB as PNG -> {after / 2**20:.1f} MiB as lossless WebP")
    return 0


if __name__ == "__main__":
    sys.exit(main())

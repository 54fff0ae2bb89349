"""Contact sheets: rows of images with captions, as one PIL image.

Used for ShapesEdit previews, the edit CLI and evaluation (e.g. one row per method, one column
per turn). Input: `rows`, a list of rows, each a list of (image, caption) with image a uint8
[H, W, 3] (or [H, W]) array; rows may differ in length and images in size. Every cell is as wide
as the widest (scaled) image, at least `min_cell_width`; captions are word-wrapped under the
image, up to `max_lines` lines (the last one ends in "..." when cut).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable built-in font (Pillow >= 10.1 with FreeType)
    except TypeError:
        return ImageFont.load_default()


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap by measured pixel width; overlong words are split; cut lines end in '...'."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            trial = f"{line} {word}" if line else word
            if font.getlength(trial) <= width:
                line = trial
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width and len(word) > 1:  # a word wider than the cell
                n = next(i for i in range(len(word), 0, -1) if font.getlength(word[:i]) <= width or i == 1)
                lines.append(word[:n])
                word = word[n:]
            line = word
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last + "..."]
    return lines


def contact_sheet(rows, *, scale: int | None = None, min_cell_width: int = 128, max_lines: int = 3,
                  font_size: int = 11, pad: int = 6, background=(255, 255, 255),
                  text_color=(20, 20, 20)) -> Image.Image:
    """rows: list[list[(uint8 [H, W, 3] or [H, W], str)]] -> PIL RGB image.

    `scale` (nearest-neighbour, integer) defaults to the smallest factor making the widest image at
    least 128 px, so 64-px ShapesEdit frames stay readable.
    """
    cells = [[(np.asarray(img), str(cap)) for img, cap in row] for row in rows]
    if not any(cells):
        raise ValueError("contact_sheet: no images")
    max_w = max(img.shape[1] for row in cells for img, _ in row)
    scale = scale or max(1, -(-128 // max_w))
    font = _font(font_size)
    asc, desc = font.getmetrics() if hasattr(font, "getmetrics") else (font_size, 2)
    line_h = asc + desc + 1
    cell_w = max(max_w * scale, min_cell_width)
    wrapped = [[_wrap(cap, font, cell_w, max_lines) if cap else [] for _, cap in row] for row in cells]
    row_h = [max(img.shape[0] * scale for img, _ in row) + (max(map(len, caps)) * line_h + 2 if any(caps) else 0)
             if row else 0 for row, caps in zip(cells, wrapped)]
    ncol = max(len(row) for row in cells)
    sheet = Image.new("RGB", (pad + ncol * (cell_w + pad), pad + sum(h + pad for h in row_h)), background)
    draw = ImageDraw.Draw(sheet)
    y = pad
    for row, caps, h in zip(cells, wrapped, row_h):
        img_h = max((img.shape[0] * scale for img, _ in row), default=0)
        for j, ((img, _), lines) in enumerate(zip(row, caps)):
            x = pad + j * (cell_w + pad)
            im = Image.fromarray(img.astype(np.uint8)).convert("RGB")
            if scale != 1:
                im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
            sheet.paste(im, (x + (cell_w - im.width) // 2, y))
            for i, line in enumerate(lines):
                draw.text((x, y + img_h + 2 + i * line_h), line, fill=text_color, font=font)
        y += h + pad
    return sheet


def save_image(img: Image.Image, path: str) -> str:
    """Writes `img` to `path`, format from the extension; a .webp is lossless (PIL's default WebP is
    lossy, and docs/ stores its pictures as lossless WebP: docs/to_webp.py). Returns path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.lower().endswith(".webp"):
        img.save(path, lossless=True, quality=100, method=6)
    else:
        img.save(path, optimize=True)
    return path


def save_contact_sheet(rows, path: str, **kwargs) -> str:
    """Writes `contact_sheet(rows, **kwargs)` to `path` (save_image); returns path."""
    return save_image(contact_sheet(rows, **kwargs), path)


def sequence_rows(seq, max_turns: int | None = None) -> list:
    """One contact-sheet row for an EditSequence-like object: source, then each turn's target."""
    k = len(seq.instructions) if max_turns is None else min(max_turns, len(seq.instructions))
    row = [(seq.source, "source")]
    for i in range(k):
        cap = f"{i + 1}. {seq.instructions[i]}"
        row.append((seq.targets[i], cap) if seq.has_target[i] else (np.full_like(seq.source, 255), cap))
    return [row]


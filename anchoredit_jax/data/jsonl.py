"""Real-data formats: JSONL + image folder (MagicBrush-like), and WebDataset tar shards.

JSONL: one edit sequence per line,
    {"source": "imgs/0.png", "turns": [{"instruction": "add a hat", "target": "imgs/1.png",
                                        "mask": "imgs/1_mask.png", "edit_type": "add"}, ...],
     "seed": 0}
"target", "mask", "edit_type", "caption" (a description of the target, for CLIP-T in
`anchoredit_jax.evaluate --clip`) and "seed" are optional; other keys are ignored. Image paths are
relative to `image_root`, or to the JSONL file's folder when it is None (absolute paths are kept).
Blank lines are skipped (line numbers still count them).

WebDataset (the reference release's format): uncompressed .tar shards holding, per sample key,
`<key>.0.jpg .. <key>.N.jpg` (frame 0 is the source, .png/.jpeg/.webp also accepted) and
`<key>.json` = {"instructions": [{"en": ..., "zh": ...}, ...]} with N instructions (plain strings
also accepted). Images are read in place (byte offsets into the tar), so access stays random.

Validation (`read_jsonl`, `read_webdataset`, and again while loading) raises one DataFormatError
naming the place ("data.jsonl:7" or "shard.tar:<key>") and the problem: malformed JSON, a
missing or mistyped key, an empty instruction, a missing, unreadable or corrupt image, an
unsupported image mode, or frames / masks of different sizes.

Image-mode policy: RGB is used as is; L and 1 are replicated to grey RGB; P is expanded through
its palette; images with alpha (RGBA, LA, PA, P with transparency) are composited over white.
16-bit / 32-bit integer and float images (I;16*, I, F) and CMYK / YCbCr / LAB / HSV images are
rejected: their conversion to 8-bit sRGB is ambiguous (bit-depth scaling, colour profiles), so
convert them yourself first. Masks go through the same check, are converted to L (for RGB(A)
masks: luminance, alpha ignored) and are True where the value is > 127 (white = edited).

Resize policy (`load_sequence(record, resolution)`): every frame of a sequence has the same size
(validated). With a requested (H, W) the frames are scaled so that they cover (H, W) (scale =
max(H / h, W / w); Lanczos for images, nearest for masks) and centre-cropped to (H, W);
resolution None keeps the native size. Turns without a target get zeros and has_target False;
turns without a mask get an all-False mask and has_mask False.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import tarfile

import numpy as np
from PIL import Image

from anchoredit_jax.data.images import resolution_hw
from anchoredit_jax.data.shapes_edit import EditSequence

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_OK_MODES = ("RGB", "L", "1", "P") + _ALPHA_MODES


class DataFormatError(ValueError):
    """A dataset file breaks the format; the message starts with the place ("file:line")."""


@dataclasses.dataclass(frozen=True)
class TarMember:
    """An image stored inside an uncompressed tar file, read by byte offset."""
    tar_path: str
    name: str
    offset: int
    size: int


ImageRef = str | TarMember


@dataclasses.dataclass(frozen=True)
class TurnRecord:
    instruction: str
    target: ImageRef | None = None
    mask: ImageRef | None = None
    edit_type: str = ""
    caption: str = ""  # a description of the target (for CLIP-T), "" when not given


@dataclasses.dataclass(frozen=True)
class SequenceRecord:
    source: ImageRef
    turns: tuple[TurnRecord, ...]
    where: str  # "file.jsonl:LINE" or "shard.tar:KEY", for error messages
    seed: int = -1


# ----------------------------------------------------------------------------- images
def _ref_name(ref: ImageRef) -> str:
    return f"{ref.tar_path}:{ref.name}" if isinstance(ref, TarMember) else ref


def open_image(ref: ImageRef, where: str, what: str) -> Image.Image:
    """Opens (header only) an image file or tar member; raises DataFormatError naming `where`."""
    try:
        if isinstance(ref, TarMember):
            with open(ref.tar_path, "rb") as f:
                f.seek(ref.offset)
                img = Image.open(io.BytesIO(f.read(ref.size)))
        else:
            if not os.path.isfile(ref):
                raise DataFormatError(f"{where}: {what} image not found: {ref}")
            img = Image.open(ref)
    except DataFormatError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for unreadable files
        raise DataFormatError(f"{where}: {what} image {_ref_name(ref)} cannot be read ({type(e).__name__}: {e})") from e
    check_mode(img, f"{where}: {what} image {_ref_name(ref)}")
    return img


def check_mode(img: Image.Image, name: str) -> None:
    """DataFormatError naming `name` unless the mode policy (module docstring) accepts img.mode."""
    if img.mode not in _OK_MODES:
        raise DataFormatError(f"{name} has unsupported mode {img.mode} "
                              "(16-bit, float, CMYK and other colour spaces are rejected; convert to 8-bit RGB)")


def to_rgb(img: Image.Image) -> Image.Image:
    """A decoded image of an accepted mode as 8-bit RGB: grey replicated, palette expanded, alpha
    (RGBA, LA, P with transparency) composited over white."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        out = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out.alpha_composite(rgba)
        return out.convert("RGB")
    return img.convert("RGB")


def decode_image(ref: ImageRef, where: str, what: str, mask: bool = False) -> Image.Image:
    """Fully decoded 8-bit RGB image (or L mask) following the mode policy in the module docstring."""
    img = open_image(ref, where, what)
    try:
        img.load()
        return img.convert("L") if mask else to_rgb(img)
    except Exception as e:  # noqa: BLE001 - truncated / corrupt data shows up only on decode
        raise DataFormatError(f"{where}: {what} image {_ref_name(ref)} is corrupt ({type(e).__name__}: {e})") from e


def fit_image(img: Image.Image, hw, mask: bool) -> np.ndarray:
    """Scale to cover (H, W) and centre-crop (see module docstring); hw None keeps the size."""
    if hw is not None and img.size != (hw[1], hw[0]):
        h, w = hw
        s = max(h / img.height, w / img.width)
        nw, nh = max(w, round(img.width * s)), max(h, round(img.height * s))
        img = img.resize((nw, nh), Image.NEAREST if mask else Image.LANCZOS)
        left, top = (nw - w) // 2, (nh - h) // 2
        img = img.crop((left, top, left + w, top + h))
    arr = np.asarray(img)
    return arr > 127 if mask else arr


def _check_sizes(record: SequenceRecord, sizes: dict[str, tuple[int, int]]) -> None:
    src = sizes["source"]
    for what, size in sizes.items():
        if size != src:
            raise DataFormatError(f"{record.where}: {what} is {size[0]}x{size[1]} (WxH) but the source is "
                                  f"{src[0]}x{src[1]}; all frames and masks of a sequence must match")


def _check_images(record: SequenceRecord) -> None:
    """Header-level check of every image of a record: exists, readable, mode, sizes."""
    sizes = {"source": open_image(record.source, record.where, "source").size}
    for k, t in enumerate(record.turns):
        for what, ref in ((f"turn {k} target", t.target), (f"turn {k} mask", t.mask)):
            if ref is not None:
                sizes[what] = open_image(ref, record.where, what).size
    _check_sizes(record, sizes)


# ----------------------------------------------------------------------------- JSONL
def _parse_line(obj, where: str, root: str) -> SequenceRecord:
    def path(p, what):
        if not isinstance(p, str) or not p:
            raise DataFormatError(f"{where}: {what} must be a non-empty string path, got {p!r}")
        return p if os.path.isabs(p) else os.path.join(root, p)

    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("source", "turns"):
        if key not in obj:
            raise DataFormatError(f"{where}: missing key {key!r}")
    if not isinstance(obj["turns"], list) or not obj["turns"]:
        raise DataFormatError(f"{where}: 'turns' must be a non-empty list")
    turns = []
    for k, t in enumerate(obj["turns"]):
        if not isinstance(t, dict):
            raise DataFormatError(f"{where}: turn {k} must be an object, got {type(t).__name__}")
        if "instruction" not in t:
            raise DataFormatError(f"{where}: turn {k} is missing key 'instruction'")
        text = t["instruction"]
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{where}: turn {k} has an empty instruction")
        caption = t.get("caption", "")
        if not isinstance(caption, str):
            raise DataFormatError(f"{where}: turn {k} caption must be a string, got {type(caption).__name__}")
        turns.append(TurnRecord(text, path(t["target"], f"turn {k} target") if t.get("target") is not None else None,
                                path(t["mask"], f"turn {k} mask") if t.get("mask") is not None else None,
                                str(t.get("edit_type", "")), caption.strip()))
    seed = obj.get("seed", -1)
    return SequenceRecord(path(obj["source"], "source"), tuple(turns), where,
                          int(seed) if isinstance(seed, int) else -1)


def read_jsonl(path: str, image_root: str | None = None, check_images: bool = True) -> list[SequenceRecord]:
    """Parses and validates a JSONL file. check_images opens every image's header (exists,
    readable, mode, sizes); pixel decoding errors surface in load_sequence, also with the line."""
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
            rec = _parse_line(obj, where, root)
            if check_images:
                _check_images(rec)
            records.append(rec)
    if not records:
        raise DataFormatError(f"{path}: no sequences")
    return records


def load_sequence(record: SequenceRecord, resolution=None, num_turns: int | None = None) -> EditSequence:
    """Decodes a record's first `num_turns` turns (all: None) at `resolution` (int, (H, W) or None)."""
    hw, where = resolution_hw(resolution), record.where
    turns = record.turns[:num_turns]
    src = decode_image(record.source, where, "source")
    sizes, targets, masks = {"source": src.size}, [], []
    for k, t in enumerate(turns):
        tgt = decode_image(t.target, where, f"turn {k} target") if t.target is not None else None
        msk = decode_image(t.mask, where, f"turn {k} mask", mask=True) if t.mask is not None else None
        if tgt is not None:
            sizes[f"turn {k} target"] = tgt.size
        if msk is not None:
            sizes[f"turn {k} mask"] = msk.size
        targets.append(tgt)
        masks.append(msk)
    _check_sizes(record, sizes)
    source = fit_image(src, hw, False)
    h, w = source.shape[:2]
    return EditSequence(
        source=source,
        targets=np.stack([fit_image(t, hw, False) if t is not None else np.zeros((h, w, 3), np.uint8) for t in targets]
                         ).reshape(len(turns), h, w, 3),
        masks=np.stack([fit_image(m, hw, True) if m is not None else np.zeros((h, w), bool) for m in masks]
                       ).reshape(len(turns), h, w),
        instructions=[t.instruction for t in turns], edit_types=[t.edit_type for t in turns], seed=record.seed,
        captions=[t.caption for t in turns],
        has_target=np.array([t is not None for t in targets], bool).reshape(len(turns)),
        has_mask=np.array([m is not None for m in masks], bool).reshape(len(turns)))


def load_pair(record: SequenceRecord, turn: int, resolution=None) -> EditSequence:
    """Turn `turn` (0-based) as a 1-turn sequence: frame `turn` -> frame `turn + 1`. Decodes only
    the two frames (and mask); both must exist."""
    turns = record.turns
    prev = record.source if turn == 0 else turns[turn - 1].target
    if prev is None or turns[turn].target is None:
        raise DataFormatError(f"{record.where}: turn {turn} is not a complete pair (a frame is missing)")
    pair = SequenceRecord(prev, (turns[turn],), record.where, record.seed)
    return load_sequence(pair, resolution)


def _save_png(arr: np.ndarray, path: str) -> None:
    Image.fromarray(arr.astype(np.uint8) * (255 if arr.dtype == bool else 1)).save(path)


def export_jsonl(sequences, out_dir: str, name: str = "data.jsonl", image_dir: str = "images",
                 start: int = 0) -> str:
    """Writes EditSequences (any iterable, consumed lazily) as PNGs + one JSONL; returns its path.
    Sequence i's frames are `image_dir/{start+i:06d}_{frame}.png`, masks `..._{frame}_mask.png`."""
    os.makedirs(os.path.join(out_dir, image_dir), exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        for i, seq in enumerate(sequences, start=start):
            rel = lambda frame, suffix="": f"{image_dir}/{i:06d}_{frame}{suffix}.png"  # noqa: E731
            _save_png(seq.source, os.path.join(out_dir, rel(0)))
            turns = []
            for k, text in enumerate(seq.instructions):
                turn = {"instruction": text}
                if seq.has_target[k]:
                    _save_png(seq.targets[k], os.path.join(out_dir, rel(k + 1)))
                    turn["target"] = rel(k + 1)
                if seq.has_mask[k]:
                    _save_png(seq.masks[k], os.path.join(out_dir, rel(k + 1, "_mask")))
                    turn["mask"] = rel(k + 1, "_mask")
                if seq.edit_types[k]:
                    turn["edit_type"] = seq.edit_types[k]
                if seq.captions[k]:
                    turn["caption"] = seq.captions[k]
                turns.append(turn)
            f.write(json.dumps({"source": rel(0), "turns": turns, "seed": int(seq.seed)}) + "\n")
    return path


# ----------------------------------------------------------------------------- WebDataset
_FRAME = re.compile(r"^(\d+)\.(jpg|jpeg|png|webp)$", re.IGNORECASE)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the file name."""
    d, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return os.path.join(d, stem), ext


def read_webdataset(paths, lang: str = "en", check_images: bool = True) -> list[SequenceRecord]:
    """Indexes WebDataset tar shard(s) (a path or a list) into SequenceRecords (no extraction)."""
    records = []
    for tar_path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        tar_path = str(tar_path)
        try:
            tf = tarfile.open(tar_path, "r:")  # uncompressed only: members are read by byte offset
        except (tarfile.TarError, OSError) as e:
            raise DataFormatError(f"{tar_path}: not an uncompressed tar file ({e})") from e
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        with tf:
            for m in tf.getmembers():
                if m.isfile():
                    key, ext = _split_key(m.name)
                    samples.setdefault(key, {})[ext.lower()] = m
            texts = {k: tf.extractfile(s["json"]).read() for k, s in samples.items() if "json" in s}
        for key, files in samples.items():
            where = f"{tar_path}:{key}"
            frames = {int(mt.group(1)): m for ext, m in files.items() if (mt := _FRAME.match(ext))}
            if "json" not in files:
                raise DataFormatError(f"{where}: missing {key}.json")
            if sorted(frames) != list(range(len(frames))) or len(frames) < 2:
                raise DataFormatError(f"{where}: frames must be {key}.0 .. {key}.N (N >= 1), found {sorted(frames)}")
            try:
                meta = json.loads(texts[key])
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{where}: malformed JSON in {key}.json ({e.msg})") from e
            instr = meta.get("instructions") if isinstance(meta, dict) else None
            if not isinstance(instr, list) or len(instr) != len(frames) - 1:
                raise DataFormatError(f"{where}: 'instructions' must be a list of {len(frames) - 1} entries "
                                      f"(one per frame after the source)")
            texts_k = [i.get(lang) if isinstance(i, dict) else i for i in instr]
            for k, t in enumerate(texts_k):
                if not isinstance(t, str) or not t.strip():
                    raise DataFormatError(f"{where}: turn {k} has an empty or missing {lang!r} instruction")
            ref = lambda m: TarMember(tar_path, m.name, m.offset_data, m.size)  # noqa: E731
            rec = SequenceRecord(ref(frames[0]),
                                 tuple(TurnRecord(t, ref(frames[k + 1])) for k, t in enumerate(texts_k)), where)
            if check_images:
                _check_images(rec)
            records.append(rec)
    return records

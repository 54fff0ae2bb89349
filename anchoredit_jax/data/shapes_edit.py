"""ShapesEdit: procedural multi-turn image-editing sequences with exact ground truth.

A scene is a small frozen dataclass tree (`Scene` -> `Background`, `Creature` of `Part`s, `Obj`s)
in resolution-free units: the shorter image side is 1.0, so one scene renders at 64, 128 or
96x160 pixels alike (the aspect ratio is part of the scene). The subject is a creature (body with
arms, head, ears/horns/antennae, eyes, tail, feet, optional hat, mouth); every part has a shape, a
colour and (body, head, tail, hat) a pattern, so its identity is something a model can visibly
lose. A few objects (circle, square, triangle, star, diamond, heart, hexagon) sit around it,
never overlapping it or each other, so no edit can hide a part by accident.

Rendering (shapes_render.py) is deterministic integer arithmetic on a supersampled canvas, so
rendering the same scene twice gives identical bytes. It also returns a label map (which element
owns each sub-pixel); the mask of an edit is the visible region of the edited element(s) before
and after the edit, which contains every pixel the edit changed (a no-op: empty mask).

Edit types (EDIT_TYPES): recolor (a part or an object), add (an object at a named place, or a
hat), remove (an object or the hat), move (an object to a place or a bit in a direction; the
creature a bit), resize (bigger/smaller), pattern (solid/stripes/dots/checks on a part),
background (colour and/or style), noop ("keep it as it is"). Each has several templates with
synonyms for the creature, parts, shapes, places and directions (shapes_phrasing.py).

Splits (SPLITS); the RNG of sequence `seed` is SeedSequence([crc32(split), seed]):
- train: train templates, no held-out combination ever appears.
- heldout_seeds: same distribution as train, but the split-salted RNG makes seed i a different
  scene than train's seed i, so the streams are disjoint (memorisation check).
- heldout_phrasings: train combinations; instructions come only from held-out templates, which no
  other split uses.
- heldout_combos: train templates; every initial scene holds at least one pair from
  HELDOUT_COMBOS (a colour or pattern on a part, a colour on an object shape) and recolour /
  pattern / add edits prefer to create them. No other split ever produces one.

Generation is sequential, so the first k turns of a K-turn sequence equal the k-turn sequence of
the same seed (pair sources rely on that: `generate_pair`).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import zlib

import numpy as np

from anchoredit_jax.data.images import resolution_hw
from anchoredit_jax.data.shapes_phrasing import (BG_PHRASES, DIRS, LOC, SHAPE_WORDS, TO, fill_template,
                                                object_ref, part_words, pick, subject_word, with_article)
from anchoredit_jax.data.shapes_render import BG_COLORS, COLORS, OBJ_ID0, PART_IDS, region_mask, render

SPLITS = ("train", "heldout_seeds", "heldout_phrasings", "heldout_combos")
EDIT_TYPES = ("recolor", "add", "remove", "move", "resize", "pattern", "background", "noop")

EYE_COLORS = ("black", "brown", "blue", "green", "red", "purple")  # white pupils would vanish
BG_STYLES = ("plain", "gradient", "stripes", "checks", "dots")
PATTERNS = ("solid", "stripes", "dots", "checks")
PART_SHAPES = {"body": ("oval", "box", "pear"), "head": ("round", "square", "wide"),
               "ears": ("pointy", "round", "long", "horns", "antennae"),
               "eyes": ("round", "big", "one", "sleepy"), "tail": ("curly", "pointy", "fluffy", "bushy"),
               "feet": ("paws",), "hat": ("none", "top hat", "party hat", "crown", "beanie")}
PATTERNED = ("body", "head", "tail", "hat")
MOUTHS = ("smile", "open", "fangs")
OBJ_SHAPES = ("circle", "square", "triangle", "star", "diamond", "heart", "hexagon")
HELDOUT_COMBOS = frozenset({("hat", "red"), ("body", "teal"), ("ears", "purple"), ("tail", "orange"),
                            ("eyes", "blue"), ("head", "checks"), ("tail", "dots"), ("star", "green"),
                            ("circle", "purple"), ("heart", "blue"), ("triangle", "yellow")})
SUBJECT_BOX = (-0.32, -0.65, 0.53, 0.47)  # creature extent (x0, y0, x1, y1) in creature sizes
MARGIN, GAP = 0.03, 0.03  # frame margin and the smallest gap between things, units
OBJ_SIZES = {"small": 0.15, "medium": 0.2, "big": 0.26}
REGIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom",
           "bottom right")


# ----------------------------------------------------------------------------- scene description
@dataclasses.dataclass(frozen=True)
class Part:
    shape: str
    color: str
    pattern: str = "solid"


@dataclasses.dataclass(frozen=True)
class Creature:
    x: float  # centre, units
    y: float
    size: float  # units; the creature spans SUBJECT_BOX * size around (x, y)
    body: Part
    head: Part
    ears: Part
    eyes: Part
    tail: Part
    feet: Part
    hat: Part  # shape "none": no hat
    mouth: str = "smile"


@dataclasses.dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    x: float
    y: float
    size: float  # diameter, units


@dataclasses.dataclass(frozen=True)
class Background:
    style: str
    color: str


@dataclasses.dataclass(frozen=True)
class Scene:
    frame: tuple[float, float]  # (height, width) in units; the shorter side is 1.0
    background: Background
    subject: Creature
    objects: tuple[Obj, ...] = ()


@dataclasses.dataclass(frozen=True)
class Edit:
    edit_type: str
    instruction: str
    template_id: str  # "key:t3" (train template 3) or "key:h1" (held-out template 1)
    scene: Scene  # the scene after the edit
    ids_before: tuple[int, ...] = ()  # labels whose visible pixels (before / after) form the mask
    ids_after: tuple[int, ...] = ()


@dataclasses.dataclass
class EditSequence:
    """One source image and K edit turns. Real data may lack some targets / masks (flags)."""
    source: np.ndarray  # [H, W, 3] uint8
    targets: np.ndarray  # [K, H, W, 3] uint8 (zeros where has_target is False)
    masks: np.ndarray  # [K, H, W] bool (all False where has_mask is False)
    instructions: list[str]  # K strings
    edit_types: list[str]  # K strings ("" when unknown)
    seed: int
    has_target: np.ndarray | None = None  # [K] bool, default all True
    has_mask: np.ndarray | None = None  # [K] bool, default all True
    captions: list[str] | None = None  # K descriptions of the targets (real data; "" = none), default all ""

    def __post_init__(self):
        k = len(self.instructions)
        if self.captions is None:
            self.captions = [""] * k
        if self.has_target is None:
            self.has_target = np.ones(k, bool)
        if self.has_mask is None:
            self.has_mask = np.ones(k, bool)


# ----------------------------------------------------------------------------- scene sampling
def _allowed(thing: str, attr: str, split: str) -> bool:
    return split == "heldout_combos" or (thing, attr) not in HELDOUT_COMBOS


def _choose(rng, thing: str, options, split: str, exclude=(), prefer_heldout=False):
    """A random allowed option != exclude; in heldout_combos prefers held-out pairs half the time."""
    cands = [o for o in options if o not in exclude and _allowed(thing, o, split)]
    held = [o for o in cands if (thing, o) in HELDOUT_COMBOS]
    if prefer_heldout and split == "heldout_combos" and held and rng.random() < 0.5:
        cands = held
    return pick(rng, cands) if cands else None


def scene_combos(scene: Scene) -> set[tuple[str, str]]:
    """All (thing, attribute) pairs present: (part, colour), (part, pattern), (shape, colour)."""
    out = set()
    for name in PART_IDS:
        p = getattr(scene.subject, name)
        if p.shape != "none":
            out |= {(name, p.color), (name, p.pattern)}
    return out | {(o.shape, o.color) for o in scene.objects}


def _sample_creature(rng, split: str) -> dict:
    parts = {}
    for name in ("body", "head", "ears", "tail", "feet", "hat"):
        shape = pick(rng, PART_SHAPES[name]) if name != "hat" or rng.random() < 0.65 else "none"
        reuse = {"head": "body", "ears": "head", "tail": "body"}.get(name)
        color = parts[reuse].color if reuse and rng.random() < 0.5 else pick(rng, COLORS)
        if not _allowed(name, color, split):
            color = _choose(rng, name, COLORS, split)
        pattern = "solid"
        if name in PATTERNED and rng.random() < {"body": 0.5, "head": 0.2, "tail": 0.4, "hat": 0.3}[name]:
            pattern = _choose(rng, name, PATTERNS[1:], split)
        parts[name] = Part(shape, color, pattern)
    parts["eyes"] = Part(pick(rng, PART_SHAPES["eyes"]), _choose(rng, "eyes", EYE_COLORS, split))
    return dict(parts, mouth=pick(rng, MOUTHS))


def _box(c: Creature) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = SUBJECT_BOX
    return c.x + x0 * c.size, c.y + y0 * c.size, c.x + x1 * c.size, c.y + y1 * c.size


def _free(scene: Scene, x: float, y: float, size: float, skip: int | None = None,
          subject: Creature | None = None) -> bool:
    """Whether an object (centre, diameter) fits in the frame without touching anything else."""
    fh, fw = scene.frame
    r = size / 2
    if not (MARGIN + r <= x <= fw - MARGIN - r and MARGIN + r <= y <= fh - MARGIN - r):
        return False
    x0, y0, x1, y1 = _box(subject or scene.subject)
    if math.hypot(x - min(max(x, x0), x1), y - min(max(y, y0), y1)) < r + GAP:
        return False
    return all(math.hypot(x - o.x, y - o.y) >= r + o.size / 2 + GAP
               for i, o in enumerate(scene.objects) if i != skip)


def _subject_fits(scene: Scene, c: Creature) -> bool:
    fh, fw = scene.frame
    x0, y0, x1, y1 = _box(c)
    inside = MARGIN <= x0 and x1 <= fw - MARGIN and MARGIN <= y0 and y1 <= fh - MARGIN
    return inside and all(_free(scene, o.x, o.y, o.size, skip=i, subject=c) for i, o in enumerate(scene.objects))


def _region_xy(scene: Scene, region: str) -> tuple[float, float]:
    i = REGIONS.index(region)
    return (i % 3 + 0.5) / 3 * scene.frame[1], (i // 3 + 0.5) / 3 * scene.frame[0]


def sample_scene(rng, frame: tuple[float, float], split: str = "train") -> Scene:
    """A random scene for a frame of (height, width) units (shorter side 1.0)."""
    fh, fw = frame
    size = rng.uniform(0.5, 0.62)
    x0, y0, x1, y1 = SUBJECT_BOX
    x = rng.uniform(MARGIN - x0 * size, fw - MARGIN - x1 * size)
    y = rng.uniform(MARGIN - y0 * size, fh - MARGIN - y1 * size)
    subject = Creature(x=x, y=y, size=size, **_sample_creature(rng, split))
    bg = Background(pick(rng, BG_STYLES[:2] * 2 + BG_STYLES), pick(rng, BG_COLORS))
    scene = Scene(frame, bg, subject)
    if split == "heldout_combos" and not scene_combos(scene) & HELDOUT_COMBOS:
        # Force one held-out pair onto a part (always possible, unlike fitting an object).
        thing, attr = pick(rng, sorted(c for c in HELDOUT_COMBOS if c[0] in PART_IDS))
        part = getattr(subject, thing)
        shape = pick(rng, PART_SHAPES["hat"][1:]) if part.shape == "none" else part.shape
        field = "pattern" if attr in PATTERNS else "color"
        part = dataclasses.replace(part, shape=shape, **{field: attr})
        scene = dataclasses.replace(scene, subject=dataclasses.replace(subject, **{thing: part}))
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(20):
            shape = pick(rng, OBJ_SHAPES)
            color = _choose(rng, shape, COLORS, split, {o.color for o in scene.objects if o.shape == shape})
            o = Obj(shape, color, rng.uniform(0, fw), rng.uniform(0, fh), pick(rng, OBJ_SIZES.values()))
            if color and _free(scene, o.x, o.y, o.size):
                scene = dataclasses.replace(scene, objects=scene.objects + (o,))
                break
    return scene


# ----------------------------------------------------------------------------- edits
def _set_part(scene: Scene, name: str, **kw) -> Scene:
    part = dataclasses.replace(getattr(scene.subject, name), **kw)
    return dataclasses.replace(scene, subject=dataclasses.replace(scene.subject, **{name: part}))


def _set_obj(scene: Scene, i: int, **kw) -> Scene:
    objs = list(scene.objects)
    objs[i] = dataclasses.replace(objs[i], **kw)
    return dataclasses.replace(scene, objects=tuple(objs))


def _parts_present(c: Creature, names) -> list[str]:
    return [n for n in names if getattr(c, n).shape != "none"]


def _edit_recolor(rng, scene, split):
    c = scene.subject
    if scene.objects and rng.random() < 0.4:
        i = int(rng.integers(len(scene.objects)))
        o = scene.objects[i]
        taken = {p.color for p in scene.objects if p.shape == o.shape}  # keep references unique
        color = _choose(rng, o.shape, COLORS, split, taken, prefer_heldout=True)
        if color is None:
            return None
        return (_set_obj(scene, i, color=color), "recolor_obj", dict(obj=object_ref(rng, scene, i), color=color),
                (OBJ_ID0 + i,), ())
    name = pick(rng, _parts_present(c, PART_IDS))
    palette = EYE_COLORS if name == "eyes" else COLORS
    color = _choose(rng, name, palette, split, {getattr(c, name).color}, prefer_heldout=True)
    if color is None:
        return None
    words, plural = part_words(c, name)
    part = pick(rng, words)
    slots = dict(subj=subject_word(rng, c), part=part, color=color, be="are" if plural else "is",
                 a_color_part=f"{color} {part}" if plural else with_article(f"{color} {part}"))
    return _set_part(scene, name, color=color), "recolor_part", slots, (PART_IDS[name],), ()


def _edit_add(rng, scene, split):
    c = scene.subject
    if c.hat.shape == "none" and rng.random() < 0.25:
        hat = Part(pick(rng, PART_SHAPES["hat"][1:]), _choose(rng, "hat", COLORS, split, prefer_heldout=True))
        new = _set_part(scene, "hat", shape=hat.shape, color=hat.color, pattern="solid")
        slots = dict(subj=subject_word(rng, c), a_color_hat=with_article(f"{hat.color} {hat.shape}"))
        return new, "add_hat", slots, (), (7,)
    if len(scene.objects) >= 4:
        return None
    shape = pick(rng, OBJ_SHAPES)
    color = _choose(rng, shape, COLORS, split, {o.color for o in scene.objects if o.shape == shape},
                    prefer_heldout=True)
    size_word = pick(rng, OBJ_SIZES)
    for region in rng.permutation(REGIONS):
        x, y = _region_xy(scene, region)
        if color and _free(scene, x, y, OBJ_SIZES[size_word]):
            new = dataclasses.replace(scene, objects=scene.objects + (Obj(shape, color, x, y, OBJ_SIZES[size_word]),))
            desc = " ".join(w for w in (size_word if size_word != "medium" else "", color,
                                        pick(rng, SHAPE_WORDS[shape])) if w)
            slots = dict(a_desc=with_article(desc), loc=pick(rng, LOC[region]))
            return new, "add_obj", slots, (), (OBJ_ID0 + len(scene.objects),)
    return None


def _edit_remove(rng, scene, split):
    c = scene.subject
    if c.hat.shape != "none" and (not scene.objects or rng.random() < 0.25):
        slots = dict(subj=subject_word(rng, c), part=pick(rng, part_words(c, "hat")[0]))
        return _set_part(scene, "hat", shape="none"), "remove_hat", slots, (7,), ()
    if not scene.objects:
        return None
    i = int(rng.integers(len(scene.objects)))
    new = dataclasses.replace(scene, objects=scene.objects[:i] + scene.objects[i + 1:])
    return new, "remove_obj", dict(obj=object_ref(rng, scene, i)), (OBJ_ID0 + i,), ()


def _edit_move_or_resize(rng, scene, split, resize: bool):
    """Move or resize the creature (1 in 4) or an object; candidates are tried in random order."""
    c = scene.subject
    if not scene.objects or rng.random() < 0.25:
        ids = tuple(PART_IDS.values())
        if resize:
            cands = [(dict(size=c.size * f), key, {}) for f, key in ((1.2, "resize_up"), (1 / 1.2, "resize_down"))
                     if 0.4 <= c.size * f <= 0.8]
        else:
            cands = [(dict(x=c.x + 0.15 * d[0], y=c.y + 0.15 * d[1]), "move_shift", dict(dir=pick(rng, DIRS[d])))
                     for d in DIRS]
        for j in rng.permutation(len(cands)):
            kw, key, slots = cands[j]
            new_c = dataclasses.replace(c, **kw)
            if _subject_fits(scene, new_c):
                return dataclasses.replace(scene, subject=new_c), key, dict(slots, obj=subject_word(rng, c)), ids, ids
        return None
    i = int(rng.integers(len(scene.objects)))
    o = scene.objects[i]
    if resize:
        cands = [(dict(size=o.size * f), key, {}) for f, key in ((1.35, "resize_up"), (1 / 1.35, "resize_down"))
                 if 0.1 <= o.size * f <= 0.36]
    elif rng.random() < 0.5:
        cands = [(dict(zip("xy", _region_xy(scene, r))), "move_region", dict(to=pick(rng, TO[r]))) for r in REGIONS]
        cands = [cd for cd in cands if math.hypot(cd[0]["x"] - o.x, cd[0]["y"] - o.y) > 0.1]
    else:
        cands = [(dict(x=o.x + 0.2 * d[0], y=o.y + 0.2 * d[1]), "move_shift", dict(dir=pick(rng, DIRS[d])))
                 for d in DIRS]
    for j in rng.permutation(len(cands)):
        kw, key, slots = cands[j]
        new = _set_obj(scene, i, **kw)
        if _free(scene, new.objects[i].x, new.objects[i].y, new.objects[i].size, skip=i):
            return new, key, dict(slots, obj=object_ref(rng, scene, i)), (OBJ_ID0 + i,), (OBJ_ID0 + i,)
    return None


def _edit_pattern(rng, scene, split):
    c = scene.subject
    name = pick(rng, _parts_present(c, PATTERNED))
    pattern = _choose(rng, name, PATTERNS, split, {getattr(c, name).pattern}, prefer_heldout=True)
    if pattern is None:
        return None
    slots = dict(subj=subject_word(rng, c), part=pick(rng, part_words(c, name)[0]))
    return _set_part(scene, name, pattern=pattern), f"pattern_{pattern}", slots, (PART_IDS[name],), ()


def _edit_background(rng, scene, split):
    bg = scene.background
    change = int(rng.integers(3))  # 0: colour, 1: style, 2: both
    color = pick(rng, [c for c in BG_COLORS if c != bg.color]) if change != 1 else bg.color
    style = pick(rng, [s for s in BG_STYLES if s != bg.style]) if change != 0 else bg.style
    phrase = pick(rng, BG_PHRASES[style]).format(c=color)
    return dataclasses.replace(scene, background=Background(style, color)), "background", dict(bg=phrase), (0,), ()


_EDITS = {"recolor": _edit_recolor, "add": _edit_add, "remove": _edit_remove,
          "move": lambda r, s, p: _edit_move_or_resize(r, s, p, False),
          "resize": lambda r, s, p: _edit_move_or_resize(r, s, p, True),
          "pattern": _edit_pattern, "background": _edit_background}
# How often each type is tried first. Every split's default; training may reweight
# (config.data.edit_weights) to spend steps on the types a model still gets wrong.
DEFAULT_EDIT_WEIGHTS = {"recolor": 3.0, "add": 1.5, "remove": 1.2, "move": 1.5, "resize": 1.2, "pattern": 1.5,
                        "background": 1.0}


def check_edit_weights(weights) -> dict[str, float] | None:
    """None (the defaults) or a full {type: weight >= 0} dict; missing types keep their default."""
    if weights is None:
        return None
    weights = dict(weights)
    unknown = sorted(set(weights) - set(_EDITS))
    if unknown:
        raise ValueError(f"edit_weights: unknown edit type(s) {unknown}; expected some of {list(_EDITS)}")
    out = {n: float(weights.get(n, DEFAULT_EDIT_WEIGHTS[n])) for n in _EDITS}
    if any(not np.isfinite(w) or w < 0 for w in out.values()) or not sum(out.values()) > 0:
        raise ValueError(f"edit_weights must be finite, >= 0 and not all 0, got {out}")
    return out


def sample_edit(rng, scene: Scene, split: str = "train", noop_prob: float = 0.1, edit_weights=None) -> Edit:
    """One valid edit of `scene` (tries edit types in a weighted random order until one applies).

    edit_weights: {type: weight} (see check_edit_weights), None for DEFAULT_EDIT_WEIGHTS. A type
    of weight 0 is still tried last, so recolor (which always applies) remains the fallback."""
    if rng.random() < noop_prob:
        text, tid = fill_template(rng, "noop", split)
        return Edit("noop", text, tid, scene)
    weights = check_edit_weights(edit_weights) or DEFAULT_EDIT_WEIGHTS
    names = list(_EDITS)
    p = np.array([weights[n] for n in names])
    nonzero = int(np.count_nonzero(p))
    order = list(rng.choice(names, size=nonzero, replace=False, p=p / p.sum()))
    for name in order + [n for n in names if n not in order]:
        out = _EDITS[name](rng, scene, split)
        if out is not None:
            new, key, slots, before, after = out
            text, tid = fill_template(rng, key, split, **slots)
            return Edit(str(name), text, tid, new, before, after)
    raise AssertionError("recolor always applies")


def _rng(seed: int, split: str) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return np.random.default_rng(np.random.SeedSequence([zlib.crc32(split.encode()), int(seed)]))


def generate_scenes(seed: int, num_turns: int, resolution=64, split: str = "train",
                    noop_prob: float = 0.1, edit_weights=None) -> tuple[list[Scene], list[Edit]]:
    """Scene descriptions only (no pixels): K+1 scenes and K edits. Only the aspect of
    `resolution` matters, so 64 and 128 give the same scenes."""
    h, w = resolution_hw(resolution)
    rng = _rng(seed, split)
    scenes = [sample_scene(rng, (h / min(h, w), w / min(h, w)), split)]
    edits = []
    for _ in range(num_turns):
        edits.append(sample_edit(rng, scenes[-1], split, noop_prob, edit_weights))
        scenes.append(edits[-1].scene)
    return scenes, edits


def render_sequence(scenes, edits, hw, seed) -> EditSequence:
    """Pixels and exact edit masks of K+1 scenes and their K edits (hw = (H, W))."""
    cache = {}  # the frames share most shapes: rasterise each once
    rendered = [render(s, hw, cache) for s in scenes]
    imgs = np.stack([r[0] for r in rendered])
    masks = np.zeros((len(edits), *hw), bool)
    for k, e in enumerate(edits):  # visible region of the edited element before and after (+ any change)
        masks[k] = (region_mask(rendered[k][1], e.ids_before) | region_mask(rendered[k + 1][1], e.ids_after)
                    | (imgs[k] != imgs[k + 1]).any(-1))
    return EditSequence(imgs[0], imgs[1:], masks, [e.instruction for e in edits], [e.edit_type for e in edits],
                        int(seed))


def generate_sequence(seed: int, num_turns: int, resolution: int | tuple[int, int] = 64, split: str = "train",
                      noop_prob: float = 0.1, edit_weights=None) -> EditSequence:
    """Sequence `seed` of `split`: source [H, W, 3] plus K targets, masks, instructions, types."""
    scenes, edits = generate_scenes(seed, num_turns, resolution, split, noop_prob, edit_weights)
    return render_sequence(scenes, edits, resolution_hw(resolution), seed)


def generate_pair(seed: int, turn: int, resolution: int | tuple[int, int] = 64, split: str = "train",
                  noop_prob: float = 0.1, edit_weights=None) -> EditSequence:
    """Turn `turn` (0-based) of sequence `seed` as a 1-turn sequence, rendering only 2 frames."""
    scenes, edits = generate_scenes(seed, turn + 1, resolution, split, noop_prob, edit_weights)
    return render_sequence(scenes[-2:], edits[-1:], resolution_hw(resolution), seed)


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> None:
    """Exports ShapesEdit sequences to the JSONL format and writes a contact sheet PNG."""
    from anchoredit_jax.data import contact_sheet, jsonl  # jsonl imports this module

    p = argparse.ArgumentParser(prog="python -m anchoredit_jax.data.shapes_edit", description=main.__doc__)
    p.add_argument("--out", required=True, help="output folder (data.jsonl, images/, contact_sheet.png)")
    p.add_argument("--num", type=int, default=8, help="number of sequences")
    p.add_argument("--turns", type=int, default=5, help="turns per sequence")
    p.add_argument("--resolution", default="64", help="N (square) or HxW, e.g. 96x160")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--seed-start", type=int, default=0, help="first seed; sequence i uses seed-start + i")
    p.add_argument("--noop-prob", type=float, default=0.1)
    p.add_argument("--sheet", type=int, default=4, help="sequences shown in the contact sheet")
    p.add_argument("--sheet-path", default=None, help="default: OUT/contact_sheet.png")
    args = p.parse_args(argv)
    h, _, w = args.resolution.lower().partition("x")
    resolution = (int(h), int(w or h))
    shown = []

    def sequences():
        for i in range(args.num):
            seq = generate_sequence(args.seed_start + i, args.turns, resolution, args.split, args.noop_prob)
            if len(shown) < args.sheet:
                shown.append(seq)
            yield seq

    path = jsonl.export_jsonl(sequences(), args.out, start=args.seed_start)
    sheet = args.sheet_path or os.path.join(args.out, "contact_sheet.png")
    if shown:
        contact_sheet.save_contact_sheet(sum((contact_sheet.sequence_rows(s) for s in shown), []), sheet)
    print(f"wrote {args.num} sequences to {path}" + (f" and a contact sheet to {sheet}" if shown else ""))


if __name__ == "__main__":
    main()

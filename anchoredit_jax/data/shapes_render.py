"""Deterministic rasteriser for ShapesEdit scenes (see shapes_edit.py for the scene tree).

Every shape is rasterised by PIL into a binary mask at SS x supersampling (cropped to the shape's
bounding box, for speed), composited with numpy into a canvas of RGB0 bytes packed in one uint32
per sub-pixel (a 2-D boolean assignment paints all three channels, 3-4x faster than a [H, W, 3]
one), and the canvas is box-filtered down with integer rounding. There is no floating-point
blending, so rendering a scene twice gives identical bytes; tests/test_shapes_edit.py pins a
digest of them, since every published result was measured on these bytes. Alongside the colours
the renderer keeps a label map [H*SS, W*SS] int16 saying which element painted each sub-pixel
last: 0 background, PART_IDS[part] for the creature's parts, OBJ_ID0 + i for object i.
`region_mask` turns a set of labels into the [H, W] bool mask of pixels any of whose sub-pixels
show them; edit masks are built from it.

Geometry: units are the shorter image side (1.0). Creature parts are laid out in creature-local
units (x right, y down, origin at the creature centre), scaled by `Creature.size`.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SS = 4  # supersampling factor
OUTLINE = 0.012  # outline width, units (0.77 px at 64 px, 1.5 px at 128 px)
OUTLINE_RGB = (30, 30, 35)
WHITE = (250, 250, 250)
COLORS = {"red": (220, 50, 47), "orange": (245, 135, 30), "yellow": (250, 210, 40),
          "green": (60, 170, 70), "teal": (0, 150, 150), "blue": (40, 100, 220),
          "purple": (140, 70, 190), "pink": (240, 115, 175), "brown": (140, 90, 50),
          "black": (40, 40, 40), "white": (248, 248, 248), "grey": (135, 135, 135)}
BG_COLORS = {"light blue": (190, 220, 245), "pale yellow": (250, 240, 190), "mint": (200, 240, 210),
             "lavender": (225, 212, 245), "peach": (250, 215, 190), "light grey": (222, 222, 222)}
PART_IDS = {"body": 1, "head": 2, "ears": 3, "eyes": 4, "tail": 5, "feet": 6, "hat": 7}
OBJ_ID0 = 16  # label of object i


def _shade(rgb, f: float) -> tuple[int, int, int]:
    return tuple(int(round(c * f)) for c in rgb)


def pattern_rgb(rgb) -> tuple[int, int, int]:
    """Second colour of a pattern: darker for light colours, lighter for dark ones."""
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return _shade(rgb, 0.6) if lum > 90 else tuple(int(round(c + (255 - c) * 0.45)) for c in rgb)


def _rot_ellipse(cx, cy, rx, ry, deg=0.0, half=False, n=40):
    """Polygon of a rotated ellipse (or its upper half, for domes and eyelids)."""
    a = math.radians(deg)
    ts = np.linspace(math.pi, 2 * math.pi, n // 2 + 1) if half else np.linspace(0, 2 * math.pi, n, endpoint=False)
    return ("poly", [(cx + rx * math.cos(t) * math.cos(a) - ry * math.sin(t) * math.sin(a),
                      cy + rx * math.cos(t) * math.sin(a) + ry * math.sin(t) * math.cos(a)) for t in ts])


def _mirror(spec):
    kind = spec[0]
    if kind == "ellipse":
        return (kind, -spec[1], *spec[2:])
    if kind == "poly":
        return (kind, [(-x, y) for x, y in spec[1]])
    return (kind, [(-x, y) for x, y in spec[1]], spec[2])  # line


def _pair(spec):
    return [spec, _mirror(spec)]


# Creature-local geometry. Specs: ("ellipse", cx, cy, rx, ry), ("rrect", cx, cy, hx, hy, radius),
# ("poly", points), ("line", points, width), ("arc", cx, cy, rx, ry, start_deg, end_deg).
_TAIL = {"curly": [("line", [(0.15, 0.27), (0.3, 0.27), (0.4, 0.2), (0.43, 0.08), (0.38, 0.0), (0.31, 0.03),
                             (0.31, 0.1), (0.37, 0.11)], 0.065)],
         "pointy": [("line", [(0.15, 0.27), (0.32, 0.26), (0.4, 0.16), (0.42, 0.06)], 0.04),
                    ("poly", [(0.42, -0.07), (0.34, 0.08), (0.5, 0.08)])],
         "fluffy": [("ellipse", 0.27, 0.25, 0.1, 0.1)],
         "bushy": [_rot_ellipse(0.32, 0.11, 0.2, 0.085, -55)]}
_EARS = {"pointy": _pair(("poly", [(-0.25, -0.22), (-0.21, -0.48), (-0.05, -0.35)])),
         "round": _pair(("ellipse", -0.18, -0.33, 0.09, 0.09)),
         "long": [_rot_ellipse(-0.13, -0.43, 0.055, 0.16, -15), _rot_ellipse(0.13, -0.43, 0.055, 0.16, 15)],
         "horns": _pair(("poly", [(-0.17, -0.28), (-0.27, -0.42), (-0.24, -0.54), (-0.08, -0.33)])),
         "antennae": _pair(("line", [(-0.06, -0.33), (-0.14, -0.5)], 0.025))
         + _pair(("ellipse", -0.14, -0.51, 0.045, 0.045))}
_BODY = {"oval": [("ellipse", 0, 0.2, 0.24, 0.2)], "box": [("rrect", 0, 0.2, 0.22, 0.19, 0.07)],
         "pear": [("poly", [(0.25 * (0.8 + 0.2 * math.sin(t)) * math.cos(t), 0.2 + 0.2 * math.sin(t))
                            for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)])]}
_ARMS = [_rot_ellipse(-0.23, 0.17, 0.05, 0.09, 35), _rot_ellipse(0.23, 0.17, 0.05, 0.09, -35)]
_FEET = _pair(("ellipse", -0.12, 0.41, 0.09, 0.05))
_HEAD = {"round": ([("ellipse", 0, -0.15, 0.25, 0.23)], -0.38),
         "square": ([("rrect", 0, -0.15, 0.24, 0.21, 0.09)], -0.36),
         "wide": ([("ellipse", 0, -0.14, 0.3, 0.2)], -0.34)}  # (specs, y of the top of the head)
_EYES = {"round": ([-0.1, 0.1], 0.07, 0.04), "sleepy": ([-0.1, 0.1], 0.07, 0.04), "big": ([-0.1, 0.1], 0.09, 0.055),
         "one": ([0.0], 0.11, 0.06)}  # (x positions, sclera radius, pupil radius); y = -0.17


def _hat(shape: str, y: float) -> list:
    if shape == "top hat":
        return [("rrect", 0, y - 0.12, 0.1, 0.12, 0.015), ("rrect", 0, y, 0.17, 0.025, 0.02)]
    if shape == "party hat":
        return [("poly", [(-0.11, y), (0.11, y), (0, y - 0.26)]), ("ellipse", 0, y - 0.26, 0.03, 0.03)]
    if shape == "crown":
        return [("poly", [(-0.13, y), (0.13, y), (0.14, y - 0.16), (0.07, y - 0.08), (0, y - 0.18),
                          (-0.07, y - 0.08), (-0.14, y - 0.16)])]
    if shape == "beanie":
        return [_rot_ellipse(0, y, 0.17, 0.15, half=True), ("rrect", 0, y, 0.18, 0.03, 0.02),
                ("ellipse", 0, y - 0.16, 0.04, 0.04)]
    return []


def _creature_layers(c):
    """Draw list of the creature: (label, rgb, pattern, specs, style), back to front, local units."""
    col = lambda p: COLORS[p.color]  # noqa: E731
    head_specs, head_top = _HEAD[c.head.shape]
    xs, rs, rp = _EYES[c.eyes.shape]
    eyes_white = [("ellipse", x, -0.17, rs, rs) for x in xs]
    pupils = [("ellipse", x, -0.16, rp, rp) for x in xs]
    glints = [("ellipse", x - 0.35 * rp, -0.16 - 0.35 * rp, 0.3 * rp, 0.3 * rp) for x in xs]
    layers = [(5, col(c.tail), c.tail.pattern, _TAIL[c.tail.shape], "outlined"),
              (3, col(c.ears), "solid", _EARS[c.ears.shape], "outlined"),
              (1, col(c.body), c.body.pattern, _ARMS + _BODY[c.body.shape], "outlined"),
              (6, col(c.feet), "solid", _FEET, "outlined"),
              (2, col(c.head), c.head.pattern, head_specs, "outlined"),
              (4, WHITE, "solid", eyes_white, "outlined"),
              (4, COLORS[c.eyes.color], "solid", pupils, "flat"),
              (4, WHITE, "solid", glints, "flat")]
    if c.eyes.shape == "sleepy":  # eyelids are skin: they belong to the head
        lids = [_rot_ellipse(x, -0.17, rs * 1.08, rs * 1.08, half=True) for x in xs]
        layers.append((2, col(c.head), "solid", lids, "outlined"))
    if c.mouth == "open":
        layers.append((2, OUTLINE_RGB, "solid", [("ellipse", 0, -0.03, 0.045, 0.035)], "flat"))
    else:
        layers.append((2, OUTLINE_RGB, "solid", [("arc", 0, -0.06, 0.07, 0.05, 20, 160)], "flat"))
        if c.mouth == "fangs":
            layers.append((2, WHITE, "solid", _pair(("poly", [(-0.045, -0.018), (-0.015, -0.01), (-0.035, 0.025)])),
                           "outlined"))
    if c.hat.shape != "none":
        layers.append((7, col(c.hat), c.hat.pattern, _hat(c.hat.shape, head_top + 0.05), "outlined"))
    return layers


def _object_specs(shape: str, r: float) -> list:
    if shape == "circle":
        return [("ellipse", 0, 0, 0.95 * r, 0.95 * r)]
    if shape == "square":
        return [("rrect", 0, 0, 0.8 * r, 0.8 * r, 0.12 * r)]
    if shape == "diamond":
        return [("poly", [(0, -r), (0.72 * r, 0), (0, r), (-0.72 * r, 0)])]
    if shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return [("poly", [(r / 17 * 16 * math.sin(t) ** 3, r / 17 * (2.5 - 13 * math.cos(t) + 5 * math.cos(2 * t)
                 + 2 * math.cos(3 * t) + math.cos(4 * t))) for t in ts])]
    n, radii, dy = {"triangle": (3, [r], 0.15 * r), "star": (10, [r, 0.45 * r], 0.05 * r),
                    "hexagon": (6, [r], 0.0)}[shape]
    start = -math.pi / 2 if shape != "hexagon" else 0.0
    return [("poly", [(radii[i % len(radii)] * math.cos(start + 2 * math.pi * i / n),
                       dy + radii[i % len(radii)] * math.sin(start + 2 * math.pi * i / n)) for i in range(n)])]


def _to_px(spec, ox, oy, s):
    """Local spec -> pixel spec: p_px = (o + p * s)."""
    kind, *a = spec
    if kind in ("ellipse", "arc"):
        return (kind, ox + a[0] * s, oy + a[1] * s, a[2] * s, a[3] * s, *a[4:])
    if kind == "rrect":
        return (kind, ox + a[0] * s, oy + a[1] * s, a[2] * s, a[3] * s, a[4] * s)
    pts = tuple((ox + x * s, oy + y * s) for x, y in a[0])  # a tuple: specs are cache keys
    return (kind, pts) if kind == "poly" else (kind, pts, a[1] * s)


def _bbox(spec, pad):
    kind = spec[0]
    if kind in ("ellipse", "arc", "rrect"):
        return spec[1] - spec[3] - pad, spec[2] - spec[4] - pad, spec[1] + spec[3] + pad, spec[2] + spec[4] + pad
    xs, ys = zip(*spec[1])
    pad += spec[2] / 2 if kind == "line" else 0
    return min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad


def _draw(d: ImageDraw.ImageDraw, spec, dx, dy, fill: bool, width: int, extra: int = 0):
    """Rasterise a pixel spec shifted by (-dx, -dy) with ink 1: its fill, or its outline of `width` px."""
    kind = spec[0]
    f, o = (1, None) if fill else (None, 1)
    if kind in ("ellipse", "arc", "rrect"):
        box = [spec[1] - spec[3] - dx, spec[2] - spec[4] - dy, spec[1] + spec[3] - dx, spec[2] + spec[4] - dy]
        if kind == "ellipse":
            d.ellipse(box, fill=f, outline=o, width=width)
        elif kind == "arc":
            d.arc(box, spec[5], spec[6], fill=1, width=width)
        else:
            d.rounded_rectangle(box, radius=spec[5], fill=f, outline=o, width=width)
        return
    pts = [(x - dx, y - dy) for x, y in spec[1]]
    if kind == "poly":
        d.polygon(pts, fill=f, outline=o, width=width if not fill else 1)
    else:  # thick line with round caps; `extra` widens it (its outline is the widened line)
        w = int(round(spec[2])) + 2 * extra
        d.line(pts, fill=1, width=w, joint="curve")
        for x, y in (pts[0], pts[-1]):
            d.ellipse([x - w / 2, y - w / 2, x + w / 2, y + w / 2], fill=1)


def _pack(rgb) -> np.uint32:
    """(r, g, b) -> one uint32 whose bytes in memory are r, g, b, 0 (any byte order)."""
    return np.array([*rgb, 0], np.uint8).view(np.uint32)[0]


class _Canvas:
    """Supersampled canvas (packed RGB0, see `_pack`) plus label map. `cache` (a dict) keeps the
    masks and patterns of every shape drawn, for the next canvas of the same size: consecutive
    frames of a sequence share most of their shapes, at the very same coordinates."""

    def __init__(self, hw, cache: dict | None = None):
        self.cache = {} if cache is None else cache
        self.h, self.w = hw[0] * SS, hw[1] * SS
        self.u = min(hw) * SS  # pixels per unit
        self.ow = max(1, int(round(OUTLINE * self.u)))
        self.rgb = np.zeros((self.h, self.w), np.uint32)
        self.lab = np.zeros((self.h, self.w), np.int16)

    def mask(self, spec, fill=True, width=0, extra=0):
        """Binary mask of a pixel spec within its (clipped) bbox: (slices, read-only bool array) or None."""
        key = ("mask", self.h, self.w, spec, fill, width, extra)
        if key not in self.cache:
            self.cache[key] = self._mask(spec, fill, width, extra)
        return self.cache[key]

    def pattern(self, kind: str, sl, ox: float, oy: float, period: float) -> np.ndarray:
        key = ("pattern", self.h, self.w, kind, sl[0].start, sl[0].stop, sl[1].start, sl[1].stop, ox, oy, period)
        if key not in self.cache:
            self.cache[key] = _pattern(kind, sl, ox, oy, period)
        return self.cache[key]

    def _mask(self, spec, fill, width, extra):
        x0, y0, x1, y1 = _bbox(spec, self.ow + extra + 2)
        x0, y0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
        x1, y1 = min(self.w, int(math.ceil(x1))), min(self.h, int(math.ceil(y1)))
        if x1 <= x0 or y1 <= y0:
            return None
        img = Image.new("L", (x1 - x0, y1 - y0), 0)
        _draw(ImageDraw.Draw(img), spec, x0, y0, fill, width, extra)
        # ink is 1, so the bytes are already a bool array (no copy through __array_interface__)
        return (slice(y0, y1), slice(x0, x1)), np.frombuffer(img.tobytes(), bool).reshape(y1 - y0, x1 - x0)

    def paint(self, m, rgb, label):
        if m is not None:
            sl, mm = m
            self.rgb[sl][mm] = _pack(rgb)
            self.lab[sl][mm] = label

    def downsample(self) -> np.ndarray:
        """[H*SS, W*SS] canvas -> [H, W, 3] uint8, the mean of each SS x SS block rounded half up
        (sums in uint16: at most SS*SS*255 = 4080; rows first, then columns, all contiguous)."""
        h, w = self.h // SS, self.w // SS
        x = self.rgb.view(np.uint8).reshape(h, SS, w * SS * 4)
        r = x[:, 0].astype(np.uint16)
        for i in range(1, SS):
            r += x[:, i]
        r = r.reshape(h, w, SS, 4)
        s = r[:, :, 0].copy()
        for i in range(1, SS):
            s += r[:, :, i]
        s += SS * SS // 2
        s //= SS * SS
        return s[..., :3].astype(np.uint8)


def _pattern(kind: str, sl, ox: float, oy: float, period: float) -> np.ndarray:
    """Pattern mask over a crop, anchored at (ox, oy) px so it moves with its owner."""
    y = (np.arange(sl[0].start, sl[0].stop) + 0.5 - oy)[:, None] / period
    x = (np.arange(sl[1].start, sl[1].stop) + 0.5 - ox)[None, :] / period
    if kind == "stripes":
        return ((x + y) % 1.0) < 0.5
    if kind == "checks":
        return (np.floor(x) + np.floor(y)) % 2 == 0
    x = x + 0.5 * (np.floor(y) % 2)  # dots on a staggered grid
    return ((x % 1.0) - 0.5) ** 2 + ((y % 1.0) - 0.5) ** 2 < 0.28 ** 2


def _background(cv: _Canvas, bg) -> None:
    c = np.array(BG_COLORS[bg.color], np.float64)
    if bg.style == "gradient":
        t = (np.arange(cv.h) + 0.5)[:, None] / cv.h
        rows = np.rint(c * (1 - 0.25 * t)).astype(np.uint8)  # [H*SS, 3]
        cv.rgb[:] = np.pad(rows, ((0, 0), (0, 1))).view(np.uint32)  # [H*SS, 1] packed, broadcast
        return
    cv.rgb[:] = _pack(c.astype(np.uint8))
    if bg.style != "plain":
        sl = (slice(0, cv.h), slice(0, cv.w))
        period = 0.2 * cv.u
        if bg.style == "stripes":
            m = np.broadcast_to(((np.arange(cv.w) + 0.5) / period % 1.0 < 0.5)[None, :], (cv.h, cv.w))
        else:
            m = cv.pattern(bg.style, sl, 0, 0, period)
        cv.rgb[m] = _pack(_shade(BG_COLORS[bg.color], 0.9))


def _layer(cv, label, rgb, pattern, specs, style, ox, oy, s):
    """Paint one layer: each spec's fill (+ pattern), then its outline, in order."""
    for spec in specs:
        px = _to_px(spec, ox, oy, s)
        if px[0] == "line" and style == "outlined":  # outline = widened line painted first
            cv.paint(cv.mask(px, extra=cv.ow), OUTLINE_RGB, label)
        if px[0] == "arc":
            cv.paint(cv.mask(px, width=cv.ow), rgb, label)
            continue
        m = cv.mask(px)
        cv.paint(m, rgb, label)
        if m is not None and pattern != "solid":
            pm = cv.pattern(pattern, m[0], ox, oy, 0.11 * s)
            cv.paint((m[0], m[1] & pm), pattern_rgb(rgb), label)
        if style == "outlined" and px[0] != "line":
            cv.paint(cv.mask(px, fill=False, width=cv.ow), OUTLINE_RGB, label)


def render(scene, resolution: tuple[int, int], cache: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scene -> (image [H, W, 3] uint8, labels [H*SS, W*SS] int16). Pass one `cache` dict to the
    renders of related scenes (a sequence's frames) to rasterise their common shapes once."""
    h, w = resolution
    cv = _Canvas((h, w), cache)
    _background(cv, scene.background)
    for i, o in enumerate(scene.objects):
        _layer(cv, OBJ_ID0 + i, COLORS[o.color], "solid", _object_specs(o.shape, o.size / 2), "outlined",
               o.x * cv.u, o.y * cv.u, cv.u)
    c = scene.subject
    for layer in _creature_layers(c):
        _layer(cv, *layer, c.x * cv.u, c.y * cv.u, c.size * cv.u)
    return cv.downsample(), cv.lab


def region_mask(labels: np.ndarray, ids) -> np.ndarray:
    """[H*SS, W*SS] labels -> [H, W] bool: pixels any of whose sub-pixels carry one of `ids`."""
    h, w = labels.shape[0] // SS, labels.shape[1] // SS
    if not len(ids):
        return np.zeros((h, w), bool)
    return np.isin(labels, list(ids)).reshape(h, SS, w, SS).any((1, 3))

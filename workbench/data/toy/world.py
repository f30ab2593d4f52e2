"""A procedurally generated image–caption world: one centred shape per image.

Every image shows one object with a shape, colour, pattern and size, on a background, in a style
("filled" or "outline"), with position/rotation jitter and pixel noise. Captions name a random
subset of those attributes and sometimes the object's *kind*.

Kinds are the classes of `toy_objects`: an invented word (e.g. "dax") bound to a fixed
(shape, colour) pair. Captions name the kind only now and then, so a model pretrained on this world
knows the attributes well but the kind names only partly: zero-shot on kind names works but is far
from perfect, while the image features carry enough to separate kinds (headroom for few-shot
adaptation). Base and new kinds share the attribute vocabulary, so base-to-novel transfer is possible.
`toy_vocab` uses a different vocabulary: plain attribute names ("striped heart").
Everything is deterministic given a `numpy.random.Generator`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

# bump when rendering, captions or classes change: cached data and models are then rebuilt
WORLD_VERSION = 1
IMAGE_SIZE = 48  # rendered size; matches wb-tiny-vit's image_size

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 15),
    "yellow": (240, 220, 30),
    "green": (40, 170, 50),
    "cyan": (30, 200, 220),
    "blue": (35, 70, 225),
    "purple": (140, 45, 200),
    "pink": (250, 120, 190),
}
PATTERNS = ("plain", "striped", "dotted", "checkered")
SIZES: dict[str, float] = {"small": 0.26, "medium": 0.34, "large": 0.43}  # radius / image size
# "source" domain backgrounds and the domain-shift ones (toy_objects_shifted)
BACKGROUNDS = ("light", "dark", "gray")
SHIFTED_BACKGROUNDS = ("noise", "grid", "tinted")
STYLES = ("filled", "outline")  # outline only appears in the shifted domain
# Shapes stay upright and nearly centred: a tiny ViT learns shape several times faster that way
# (supervised 6-shape check, 150 steps: 40% with +-8% jitter and +-14 deg rotation, 73-84% without).
JITTER = 0.04  # max centre offset, fraction of the image size
ROTATION = 0.0  # max rotation, radians
PATTERN_CONTRAST = 0.5  # how far the pattern's second colour moves towards white/black

PATTERN_WORDS = {"plain": "plain", "striped": "striped", "dotted": "dotted", "checkered": "checkered"}
BACKGROUND_WORDS = {
    "light": "a light background",
    "dark": "a dark background",
    "gray": "a gray background",
    "noise": "a noisy background",
    "grid": "a grid background",
    "tinted": "a colored background",
}


@dataclass(frozen=True)
class ToyClass:
    """One class: a name plus the attributes every one of its images has."""

    name: str
    attrs: dict = field(hash=False)
    descriptions: tuple[str, ...] = field(default=(), hash=False)


# ---------------------------------------------------------------- class vocabularies

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "bl", "gl", "sn", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("b", "d", "g", "k", "m", "n", "p", "x", "sh", "rp", "nt")


@lru_cache(maxsize=None)
def kind_names(n: int, seed: int = 1234) -> tuple[str, ...]:
    """`n` distinct invented two-syllable words ("vokun", "blimex"), deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    names: list[str] = []
    while len(names) < n:
        word = str(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_ONSETS[:14])
                   + rng.choice(_VOWELS) + rng.choice(_CODAS))
        if word not in names:
            names.append(word)
    return tuple(names)


def _kind_descriptions(name: str, shape: str, color: str) -> tuple[str, ...]:
    return (
        f"a {name} is a {color} {shape}.",
        f"a {name} has the shape of a {shape}.",
        f"a {name} is always {color}.",
        f"a {name} looks like a {color} {shape} of any size and pattern.",
    )


@lru_cache(maxsize=None)
def toy_objects_classes() -> tuple[ToyClass, ...]:
    """The 48 kinds of `toy_objects`: every (shape, colour) pair, in a fixed shuffled order.

    The order is shuffled once so the base half (first 24 labels) and the new half both cover
    every shape and colour, but in different combinations.
    """
    pairs = [(s, c) for s in SHAPES for c in COLORS]
    order = _balanced_order(pairs)
    names = kind_names(len(pairs))
    out = []
    for name, (shape, color) in zip(names, order):
        out.append(ToyClass(name, {"shape": shape, "color": color}, _kind_descriptions(name, shape, color)))
    return tuple(out)


def _balanced_order(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Latin-square split: base gets pairs with (shape index + colour index) even, new the rest."""
    si = {s: i for i, s in enumerate(SHAPES)}
    ci = {c: i for i, c in enumerate(COLORS)}
    base = [p for p in pairs if (si[p[0]] + ci[p[1]]) % 2 == 0]
    new = [p for p in pairs if (si[p[0]] + ci[p[1]]) % 2 == 1]
    return base + new


@lru_cache(maxsize=None)
def toy_vocab_classes() -> tuple[ToyClass, ...]:
    """16 classes named by plain attributes: pattern x shape (4 patterns x 4 shapes), any colour."""
    surface = {"plain": "one flat colour", "striped": "stripes", "dotted": "dots", "checkered": "a checkerboard"}
    out = []
    for shape in ("circle", "square", "star", "heart"):
        for pattern in PATTERNS:
            name = f"{PATTERN_WORDS[pattern]} {shape}"
            desc = (
                f"a {name} is a {shape} covered with {surface[pattern]}.",
                f"a {name} has the outline of a {shape}.",
                f"the pattern of a {name} is {PATTERN_WORDS[pattern]}.",
            )
            out.append(ToyClass(name, {"shape": shape, "pattern": pattern}, desc))
    return tuple(out)


# ---------------------------------------------------------------- sampling

def sample_attrs(rng: np.random.Generator, fixed: dict | None = None, domain: str = "source") -> dict:
    """Random object attributes; `fixed` overrides some; `domain` is "source" or "shifted"."""
    attrs = {
        "shape": SHAPES[rng.integers(len(SHAPES))],
        "color": list(COLORS)[rng.integers(len(COLORS))],
        "pattern": PATTERNS[rng.integers(len(PATTERNS))],
        "size": list(SIZES)[rng.integers(len(SIZES))],
    }
    if domain == "shifted":
        attrs["background"] = SHIFTED_BACKGROUNDS[rng.integers(len(SHIFTED_BACKGROUNDS))]
        attrs["style"] = STYLES[rng.integers(len(STYLES))]
    else:
        attrs["background"] = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        attrs["style"] = "filled"
    if fixed:
        attrs.update(fixed)
    return attrs


# ---------------------------------------------------------------- rendering

@lru_cache(maxsize=None)
def _shape_points(shape: str) -> list[tuple[float, float]] | None:
    """Polygon of a shape with outer radius ~1 (y down), or None for analytic shapes."""
    if shape == "square":
        r = 0.82
        return [(-r, -r), (r, -r), (r, r), (-r, r)]
    if shape == "triangle":
        return [(math.cos(a), math.sin(a) + 0.15) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            r = 1.0 if k % 2 == 0 else 0.42
            pts.append((r * math.cos(a), r * math.sin(a)))
        return pts
    if shape == "cross":
        a, b = 0.3, 0.95
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    if shape == "heart":
        pts = []
        for k in range(40):
            t = 2 * math.pi * k / 40
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 16.5, -y / 16.5 + 0.1))
        return pts
    return None


def _shape_mask(shape: str, size: int, cx: float, cy: float, radius: float, angle: float, ss: int = 4) -> np.ndarray:
    """Anti-aliased coverage mask in [0, 1] (drawn at `ss`x then box-filtered)."""
    big = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(big)
    cxs, cys, rs = cx * ss, cy * ss, radius * ss
    if shape == "circle":
        draw.ellipse([cxs - rs, cys - rs, cxs + rs, cys + rs], fill=255)
    else:
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(cxs + rs * (x * ca - y * sa), cys + rs * (x * sa + y * ca)) for x, y in _shape_points(shape)]
        draw.polygon(pts, fill=255)
    small = big.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy, xx


def _pattern_mask(pattern: str, size: int, radius: float, angle: float, phase: tuple[float, float]) -> np.ndarray:
    """Where the pattern's second colour shows (soft mask in [0, 1]); scale follows the object."""
    if pattern == "plain":
        return np.zeros((size, size), np.float32)
    yy, xx = _grid(size)
    period = max(radius * 0.55, 4.0)
    ca, sa = math.cos(angle), math.sin(angle)
    u = (xx * ca + yy * sa) / period + phase[0]
    v = (-xx * sa + yy * ca) / period + phase[1]
    if pattern == "striped":
        m = np.sin(2 * np.pi * (u + v) / 1.4)
        return np.clip(m * 2.0, 0, 1)
    if pattern == "dotted":
        du, dv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
        d = np.sqrt(du * du + dv * dv)
        return np.clip((0.3 - d) * 8.0, 0, 1)
    if pattern == "checkered":
        m = np.sin(2 * np.pi * u / 1.2) * np.sin(2 * np.pi * v / 1.2)
        return np.clip(m * 3.0 + 0.5, 0, 1)
    raise ValueError(f"unknown pattern {pattern!r}")


def _flat(rgb, size: int) -> np.ndarray:
    bg = np.empty((size, size, 3), np.float32)
    bg[...] = rgb
    return bg


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "light":
        return _flat(rng.uniform(205, 250) + rng.uniform(-8, 8, 3), size)
    if kind == "dark":
        return _flat(rng.uniform(10, 55) + rng.uniform(-6, 6, 3), size)
    if kind == "gray":
        return _flat(rng.uniform(110, 150) + rng.uniform(-5, 5, 3), size)
    if kind == "noise":  # blocky coloured noise, upsampled
        coarse = rng.uniform(70, 190, (size // 6 + 1, size // 6 + 1, 3)).astype(np.float32)
        return np.kron(coarse, np.ones((6, 6, 1), np.float32))[:size, :size]
    if kind == "grid":
        bg = np.full((size, size, 3), rng.uniform(190, 235), np.float32)
        step = int(rng.integers(5, 9))
        off = int(rng.integers(step))
        line = rng.uniform(60, 140, 3).astype(np.float32)
        bg[(np.arange(size) + off) % step == 0, :, :] = line
        bg[:, (np.arange(size) + off) % step == 0, :] = line
        return bg
    if kind == "tinted":
        return _flat(rng.uniform(60, 200, 3), size)
    raise ValueError(f"unknown background {kind!r}")


def render_array(attrs: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render `attrs` to an (size, size, 3) uint8 array; jitter and noise come from `rng`."""
    bg = _background(attrs["background"], size, rng)
    radius = SIZES[attrs["size"]] * size * rng.uniform(0.93, 1.07)
    jitter = JITTER * size
    cx = size / 2 + rng.uniform(-jitter, jitter)
    cy = size / 2 + rng.uniform(-jitter, jitter)
    angle = rng.uniform(-ROTATION, ROTATION)
    mask = _shape_mask(attrs["shape"], size, cx, cy, radius, angle)
    if attrs.get("style", "filled") == "outline":
        inner = _shape_mask(attrs["shape"], size, cx, cy, radius * 0.72, angle)
        mask = np.clip(mask - inner, 0, 1)
    color = np.array(COLORS[attrs["color"]], np.float32) * rng.uniform(0.9, 1.08)
    # the pattern's second colour: a strong tint towards white or black
    toward = 255.0 if color.mean() < 150 else 0.0
    second = color + PATTERN_CONTRAST * (toward - color)
    pat = _pattern_mask(attrs["pattern"], size, radius, rng.uniform(-0.5, 0.5), tuple(rng.uniform(0, 1, 2)))
    obj = color[None, None, :] * (1 - pat[..., None]) + second[None, None, :] * pat[..., None]
    img = bg * (1 - mask[..., None]) + obj * mask[..., None]
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1, 8))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(attrs: dict, size: int, rng: np.random.Generator) -> Image.Image:
    """Render `attrs` to an RGB PIL image of `size` x `size`."""
    return Image.fromarray(render_array(attrs, size, rng), "RGB")


# ---------------------------------------------------------------- captions

CAPTION_TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "a picture of a {}.",
    "there is a {} in the image.",
    "an image showing a {}.",
    "a {} on {}.",
    "a photo of a {} on {}.",
)


def attribute_phrase(attrs: dict, keys: set[str]) -> str:
    """Noun phrase naming the attributes in `keys`, e.g. "small striped red star"."""
    words = []
    if "size" in keys:
        words.append(attrs["size"])
    if "pattern" in keys:
        words.append(PATTERN_WORDS[attrs["pattern"]])
    if "color" in keys:
        words.append(attrs["color"])
    if attrs.get("style") == "outline" and "style" in keys:
        words.append("outlined")
    words.append(attrs["shape"] if "shape" in keys else "shape")
    return " ".join(words)


# probability that a caption mentions each attribute
MENTION_P = {"shape": 0.75, "color": 0.7, "pattern": 0.5, "size": 0.5, "style": 0.7}
BACKGROUND_P = 0.3


def caption(attrs: dict, rng: np.random.Generator, kind: str | None = None, name_p: float = 0.0) -> tuple[str, set[str]]:
    """One caption for `attrs`; names the `kind` with probability `name_p`.

    Returns the caption and the set of attribute keys it mentions ("kind" included when named).
    """
    keys = {k for k, p in MENTION_P.items() if rng.random() < p}
    if attrs.get("style") != "outline":
        keys.discard("style")  # "filled" is never mentioned
    if not keys & {"shape", "color", "pattern", "size"}:
        keys.add("shape")
    named = kind is not None and rng.random() < name_p
    phrase = attribute_phrase(attrs, keys)
    if named:
        r = rng.random()
        if r < 0.35:
            phrase, keys = kind, set()
        elif r < 0.7:
            phrase = f"{kind}, a {phrase}"
        else:
            phrase = f"{phrase} called a {kind}"
        keys.add("kind")
    with_bg = rng.random() < BACKGROUND_P
    if with_bg:
        keys.add("background")
        tpl = CAPTION_TEMPLATES[5 + int(rng.integers(2))]
        return tpl.format(phrase, BACKGROUND_WORDS[attrs["background"]]), keys
    tpl = CAPTION_TEMPLATES[int(rng.integers(5))]
    return tpl.format(phrase), keys

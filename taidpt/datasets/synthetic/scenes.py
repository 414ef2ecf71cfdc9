"""Seeded multi-label scenes: sample a layout (:func:`sample_scene`), then draw it (:func:`render_scene`).

A :class:`Scene` is a small value (objects, background, a render seed), so caption-only splits
sample scenes without drawing them and the same scene renders identically at any size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from taidpt.datasets.synthetic.shapes import REACH, local_coords, object_mask, paint

VOCAB_FILE = Path(__file__).with_name("classes.json")
OBJECT_COUNT_PROBS = (0.25, 0.3, 0.25, 0.2)  # P(1..4 objects)
REPEAT_PROB = 0.25  # an object repeats an earlier class (gives counts: "two stars")
SIZE_RANGE = (0.12, 0.26)  # object radius, fraction of the image side
MIN_VISIBLE = 0.5  # an object keeps at least this fraction of its pixels after occlusion
LAYOUT_RES = 64  # resolution of the occlusion check (independent of the image size)
# How a scene is drawn, like the domains of real images: "photo" (shaded objects, textured
# background, sensor noise), "drawing" (flat colours, dark outlines, no noise) or "sketch"
# (a drawing in grey levels). Captions name the style only sometimes.
STYLE_PROBS = {"photo": 0.5, "drawing": 0.3, "sketch": 0.2}


@dataclass(frozen=True)
class ObjectClass:
    synonyms: Tuple[str, ...]
    plurals: Tuple[str, ...]
    shape: str
    texture: str
    colours: Dict[str, Tuple[int, int, int]]
    detail: Tuple[int, int, int]

    @property
    def name(self) -> str:
        return self.synonyms[0]


@dataclass(frozen=True)
class Vocabulary:
    """What scenes are made of: object classes, named background colours and patterns."""

    classes: Tuple[ObjectClass, ...]
    backgrounds: Dict[str, Tuple[int, int, int]]
    patterns: Tuple[str, ...]


@lru_cache(maxsize=None)
def load_vocabulary(num_classes: int = -1) -> Vocabulary:
    """The classes of ``classes.json`` (the first ``num_classes``; -1 all) and its backgrounds.
    Cached: treat the result as read-only."""
    data = json.loads(VOCAB_FILE.read_text(encoding="utf-8"))
    classes = [ObjectClass(tuple(c["synonyms"]), tuple(c["plurals"]), c["shape"], c["texture"],
                           {k: tuple(v) for k, v in c["colours"].items()}, tuple(c["detail"]))
               for c in data["classes"]]
    if num_classes > len(classes) or num_classes == 0 or num_classes < -1:
        raise ValueError(f"DATASET.SYNTHETIC.NUM_CLASSES={num_classes}: {VOCAB_FILE} defines "
                         f"{len(classes)} classes; use 1..{len(classes)} or -1 for all of them.")
    classes = classes if num_classes == -1 else classes[:num_classes]
    return Vocabulary(tuple(classes), {k: tuple(v) for k, v in data["backgrounds"].items()},
                 tuple(data["patterns"]))


@dataclass(frozen=True)
class SceneObject:
    label: int
    colour: str
    x: float  # centre, fraction of the image side
    y: float
    size: float  # radius, fraction of the image side
    angle: float  # radians


@dataclass(frozen=True)
class Scene:
    objects: Tuple[SceneObject, ...]  # drawing order: later objects occlude earlier ones
    background: str
    pattern: str
    render_seed: int
    style: str = "photo"

    def label_vector(self, num_classes: int) -> np.ndarray:
        """``C`` float32 labels: 1 for classes in the scene, -1 otherwise."""
        label = -np.ones(num_classes, dtype=np.float32)
        label[[obj.label for obj in self.objects]] = 1.0
        return label


def _visible(objects: Sequence[SceneObject], vocab: Vocabulary) -> np.ndarray:
    """Per object: is at least ``MIN_VISIBLE`` of it left uncovered by the objects drawn after it?"""
    xy = np.array([(obj.x, obj.y) for obj in objects])
    reach = np.array([obj.size * REACH[vocab.classes[obj.label].shape] for obj in objects])
    apart = np.linalg.norm(xy[:, None] - xy[None], axis=-1) >= reach[:, None] + reach[None]
    if apart.sum() == len(objects) * (len(objects) - 1):  # no two objects can touch
        return np.ones(len(objects), dtype=bool)
    owner = np.full((LAYOUT_RES, LAYOUT_RES), -1)
    areas = []
    for i, obj in enumerate(objects):
        mask = np.asarray(object_mask(vocab.classes[obj.label].shape, obj.x * LAYOUT_RES,
                                      obj.y * LAYOUT_RES, obj.size * LAYOUT_RES, obj.angle, LAYOUT_RES)) > 0
        owner[mask] = i
        areas.append(max(mask.sum(), 1))
    return np.bincount(owner[owner >= 0], minlength=len(objects)) / np.array(areas) >= MIN_VISIBLE


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator, vocab: Vocabulary, max_objects: int = 4) -> Scene:
    """Draw 1..``max_objects`` objects (classes may repeat), each at least half visible."""
    probs = np.cumsum(OBJECT_COUNT_PROBS[:max_objects])
    labels: List[int] = []
    for _ in range(1 + int(np.searchsorted(probs / probs[-1], rng.random()))):
        unused = [c for c in range(len(vocab.classes)) if c not in labels]
        labels.append(_pick(rng, labels if labels and (not unused or rng.random() < REPEAT_PROB) else unused))
    for _ in range(20):
        sizes = rng.uniform(*SIZE_RANGE, size=len(labels))
        centres = rng.uniform(sizes[:, None], 1 - sizes[:, None], size=(len(labels), 2))
        angles = rng.uniform(0, 2 * np.pi, size=len(labels))
        objects = [SceneObject(label, _pick(rng, list(vocab.classes[label].colours)), float(x), float(y),
                               float(size), float(angle))
                   for label, (x, y), size, angle in zip(labels, centres, sizes, angles)]
        visible = _visible(objects, vocab)
        if visible.all():
            break
    objects = [obj for obj, keep in zip(objects, visible) if keep]
    style = str(rng.choice(list(STYLE_PROBS), p=list(STYLE_PROBS.values())))
    return Scene(tuple(objects), _pick(rng, list(vocab.backgrounds)), _pick(rng, vocab.patterns),
                 int(rng.integers(2 ** 31)), style)


@lru_cache(maxsize=8)
def _grid(res: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel centre coordinates ``(ys, xs)``, each ``res x res``."""
    ys, xs = np.mgrid[0:res, 0:res].astype(np.float32)
    return ys, xs


def _erode(mask: np.ndarray, step: int) -> np.ndarray:
    """Pixels of ``mask`` whose 4-neighbours ``step`` pixels away are inside too."""
    inner = mask.copy()
    inner[step:] &= mask[:-step]
    inner[:-step] &= mask[step:]
    inner[:, step:] &= mask[:, :-step]
    inner[:, :-step] &= mask[:, step:]
    return inner


def _background(rng: np.random.Generator, rgb: Sequence[int], pattern: str, res: int) -> np.ndarray:
    base = np.clip(np.array(rgb, dtype=np.float32) + rng.normal(0, 12, 3), 0, 255)
    ys, xs = (grid / res for grid in _grid(res))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = xs * np.cos(angle) + ys * np.sin(angle)
    if pattern == "gradient":
        light = 0.75 + 0.5 * (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    elif pattern == "striped":
        light = 1.0 + 0.12 * np.sign(np.sin(ramp * rng.uniform(10, 30)))
    elif pattern == "dotted":
        period = rng.uniform(0.08, 0.16)
        light = 1.0 - 0.15 * ((np.hypot((xs % period) / period - 0.5, (ys % period) / period - 0.5)) < 0.25)
    else:
        light = np.ones_like(xs)
    return np.clip(base * light[..., None], 0, 255).astype(np.uint8)


def _coverage(mask: np.ndarray, factor: int) -> np.ndarray:
    """Fraction of each ``factor x factor`` block that is set: ``H x W`` bool -> ``H/f x W/f`` float."""
    return sum(mask[i::factor, j::factor].astype(np.float32) for i in range(factor)
               for j in range(factor)) / factor ** 2


def render_scene(scene: Scene, vocab: Vocabulary, size: int = 64, supersample: int = 2) -> np.ndarray:
    """Draw a scene in its style: ``size x size x 3`` uint8; object edges anti-aliased by ``supersample``."""
    rng = np.random.default_rng(scene.render_seed)
    photo = scene.style == "photo"
    canvas = Image.fromarray(_background(rng, vocab.backgrounds[scene.background],
                                         scene.pattern if photo else "plain", size))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(0, 4)):  # clutter: thin lines that belong to no class
        draw.line(rng.uniform(0, size, 4).tolist(), fill=tuple(rng.integers(0, 256, 3).tolist()))
    image = np.asarray(canvas, dtype=np.float32).copy()
    # Noise is drawn before the objects (an object's random colour does not shift it), in every style.
    noise = rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(1, 10)
    ys, xs = (grid + 0.5 for grid in _grid(size))
    for obj in scene.objects:
        cls = vocab.classes[obj.label]
        x, y, radius = obj.x * size, obj.y * size, obj.size * size
        reach = REACH[cls.shape] * radius
        box = tuple(slice(max(int(c - reach) - 1, 0), min(int(c + reach) + 2, size)) for c in (y, x))
        fine = tuple(slice(b.start * supersample, b.stop * supersample) for b in box)
        mask = np.asarray(object_mask(cls.shape, x * supersample, y * supersample, radius * supersample,
                                      obj.angle, size * supersample))[fine] > 0
        alpha = _coverage(mask, supersample)[..., None]
        edge = _coverage(mask & ~_erode(mask, supersample * (1 if photo else 2)), supersample)[..., None]
        base = np.array(cls.colours[obj.colour], np.float32) * rng.uniform(0.85, 1.1) + rng.normal(0, 8, 3)
        u, v = local_coords(xs[box], ys[box], x, y, radius, obj.angle)
        colours = paint(cls.texture, u, v, np.clip(base, 0, 255), np.array(cls.detail, np.float32),
                        shaded=photo)
        darken = 0.55 if photo else 0.9  # drawings have dark outlines
        image[box] += alpha * (colours * (1 - darken * edge / np.maximum(alpha, 1e-6)) - image[box])
    if photo:
        image += noise
    elif scene.style == "sketch":
        image[:] = (image @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)

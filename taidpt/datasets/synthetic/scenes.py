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

from taidpt.datasets.synthetic.shapes import local_coords, object_mask, paint

VOCAB_FILE = Path(__file__).with_name("classes.json")
OBJECT_COUNT_PROBS = (0.25, 0.3, 0.25, 0.2)  # P(1..4 objects)
REPEAT_PROB = 0.25  # an object repeats an earlier class (gives counts: "two stars")
SIZE_RANGE = (0.12, 0.26)  # object radius, fraction of the image side
MIN_VISIBLE = 0.5  # an object keeps at least this fraction of its pixels after occlusion
LAYOUT_RES = 64  # resolution of the occlusion check (independent of the image size)


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
class World:
    """The vocabulary of a world: its classes and named backgrounds."""

    classes: Tuple[ObjectClass, ...]
    backgrounds: Dict[str, Tuple[int, int, int]]
    patterns: Tuple[str, ...]


def load_world(num_classes: int = -1) -> World:
    """The classes of ``classes.json`` (the first ``num_classes``; -1 all) and its backgrounds."""
    data = json.loads(VOCAB_FILE.read_text(encoding="utf-8"))
    classes = [ObjectClass(tuple(c["synonyms"]), tuple(c["plurals"]), c["shape"], c["texture"],
                           {k: tuple(v) for k, v in c["colours"].items()}, tuple(c["detail"]))
               for c in data["classes"]]
    if num_classes > len(classes) or num_classes == 0 or num_classes < -1:
        raise ValueError(f"DATASET.SYNTHETIC.NUM_CLASSES={num_classes}: {VOCAB_FILE} defines "
                         f"{len(classes)} classes; use 1..{len(classes)} or -1 for all of them.")
    classes = classes if num_classes == -1 else classes[:num_classes]
    return World(tuple(classes), {k: tuple(v) for k, v in data["backgrounds"].items()},
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

    def label_vector(self, num_classes: int) -> np.ndarray:
        """``C`` float32 labels: 1 for classes in the scene, -1 otherwise."""
        label = -np.ones(num_classes, dtype=np.float32)
        label[[obj.label for obj in self.objects]] = 1.0
        return label


def _visible_fractions(objects: Sequence[SceneObject], world: World) -> np.ndarray:
    owner = np.full((LAYOUT_RES, LAYOUT_RES), -1)
    areas = []
    for i, obj in enumerate(objects):
        mask = np.asarray(object_mask(world.classes[obj.label].shape, obj.x * LAYOUT_RES,
                                      obj.y * LAYOUT_RES, obj.size * LAYOUT_RES, obj.angle, LAYOUT_RES)) > 0
        owner[mask] = i
        areas.append(max(mask.sum(), 1))
    return np.bincount(owner[owner >= 0], minlength=len(objects)) / np.array(areas)


def sample_scene(rng: np.random.Generator, world: World, max_objects: int = 4) -> Scene:
    """Draw 1..``max_objects`` objects (classes may repeat), each at least half visible."""
    probs = np.array(OBJECT_COUNT_PROBS[:max_objects])
    labels: List[int] = []
    for _ in range(1 + rng.choice(len(probs), p=probs / probs.sum())):
        unused = [c for c in range(len(world.classes)) if c not in labels]
        repeat = labels and (not unused or rng.random() < REPEAT_PROB)
        labels.append(int(rng.choice(labels if repeat else unused)))
    for _ in range(20):
        objects = []
        for label in labels:
            size = rng.uniform(*SIZE_RANGE)
            x, y = rng.uniform(size, 1 - size, size=2)
            objects.append(SceneObject(label, str(rng.choice(list(world.classes[label].colours))),
                                       float(x), float(y), float(size), float(rng.uniform(0, 2 * np.pi))))
        visible = _visible_fractions(objects, world) >= MIN_VISIBLE
        if visible.all():
            break
    objects = [obj for obj, keep in zip(objects, visible) if keep]
    return Scene(tuple(objects), str(rng.choice(list(world.backgrounds))), str(rng.choice(world.patterns)),
                 int(rng.integers(2 ** 31)))


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
    return np.clip(base * light[..., None] + 8.0 * (base < 60), 0, 255)


def render_scene(scene: Scene, world: World, size: int = 64, supersample: int = 2) -> np.ndarray:
    """Draw a scene: ``size x size x 3`` uint8 (objects anti-aliased by ``supersample``, then noise)."""
    rng = np.random.default_rng(scene.render_seed)
    canvas = Image.fromarray(_background(rng, world.backgrounds[scene.background], scene.pattern, size)
                             .astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(0, 4)):  # clutter: thin lines that belong to no class
        draw.line(rng.uniform(0, size, 4).tolist(), fill=tuple(rng.integers(0, 256, 3).tolist()))
    res = size * supersample
    image = np.asarray(canvas, dtype=np.float32).repeat(supersample, 0).repeat(supersample, 1)
    ys, xs = _grid(res)
    for obj in scene.objects:
        cls = world.classes[obj.label]
        x, y, radius = obj.x * res, obj.y * res, obj.size * res
        box = tuple(slice(max(int(c - 1.2 * radius) - 1, 0), min(int(c + 1.2 * radius) + 2, res)) for c in (y, x))
        mask = (np.asarray(object_mask(cls.shape, x, y, radius, obj.angle, res)) > 0)[box]
        base = np.array(cls.colours[obj.colour], np.float32) * rng.uniform(0.85, 1.1) + rng.normal(0, 8, 3)
        u, v = local_coords(xs[box][mask], ys[box][mask], x, y, radius, obj.angle)
        crop = image[box]
        crop[mask] = paint(cls.texture, u, v, np.clip(base, 0, 255), np.array(cls.detail, np.float32))
        crop[mask & ~_erode(mask, supersample)] *= 0.45  # dark outline
    image = sum(image[i::supersample, j::supersample] for i in range(supersample)
                for j in range(supersample)) / supersample ** 2
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(1, 10)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)

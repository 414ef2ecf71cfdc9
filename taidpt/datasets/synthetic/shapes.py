"""Object geometry and paint of the synthetic world.

A shape is a list of polygons in unit coordinates (the object spans about [-1, 1]^2, y points down),
each one filled or cut out. A texture paints colours from the local coordinates ``u, v`` of the
pixels (the object's frame: rotated, divided by its radius).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

Polygon = np.ndarray  # K x 2 unit coordinates


def _curve(x_fn, y_fn, points: int = 48) -> Polygon:
    t = np.linspace(0.0, 2.0 * np.pi, points, endpoint=False)
    return np.stack([x_fn(t), y_fn(t)], axis=1)


def _circle(radius: float = 1.0, cx: float = 0.0, cy: float = 0.0) -> Polygon:
    return _curve(lambda t: cx + radius * np.cos(t), lambda t: cy + radius * np.sin(t))


def _polar(radius_fn, points: int = 90) -> Polygon:
    return _curve(lambda t: radius_fn(t) * np.cos(t), lambda t: radius_fn(t) * np.sin(t), points)


def _star(points: int = 5, inner: float = 0.42) -> Polygon:
    t = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


# name -> [(polygon, filled)]; later polygons paint over earlier ones.
SHAPES: Dict[str, List[Tuple[Polygon, bool]]] = {
    "circle": [(_circle(), True)],
    "apple": [(_circle(0.95, 0, 0.05), True),
              (np.array([[-0.07, -1.15], [0.07, -1.15], [0.07, -0.7], [-0.07, -0.7]]), True)],
    "ring": [(_circle(), True), (_circle(0.42), False)],
    "egg": [(_curve(lambda t: 0.72 * np.cos(t) * (1 + 0.12 * np.sin(t)), np.sin), True)],
    "lemon": [(_curve(lambda t: np.cos(t) * (1 + 0.22 * np.exp(-np.sin(t) ** 2 / 0.015)),
                      lambda t: 0.62 * np.sin(t), points=96), True)],
    "fish": [(_curve(lambda t: 0.72 * np.cos(t) - 0.2, lambda t: 0.5 * np.sin(t)), True),
             (np.array([[0.35, 0.0], [1.0, -0.5], [1.0, 0.5]]), True)],
    "star": [(_star(), True)],
    "heart": [(_curve(lambda t: np.sin(t) ** 3 * 16 / 17,
                      lambda t: 0.15 - (13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t)
                                        - np.cos(4 * t)) / 17, points=64), True)],
    "rectangle": [(np.array([[-1.0, -0.5], [1.0, -0.5], [1.0, 0.5], [-1.0, 0.5]]), True)],
    "wedge": [(np.array([[-1.0, 0.6], [1.0, 0.6], [0.6, -0.75]]), True)],
    "tree": [(np.array([[0.0, -1.0], [0.7, 0.45], [0.15, 0.45], [0.15, 1.0], [-0.15, 1.0],
                        [-0.15, 0.45], [-0.7, 0.45]]), True)],
    "crescent": [(_circle(), True), (_circle(0.85, 0.42, -0.25), False)],
    "flower": [(_polar(lambda t: 0.45 + 0.55 * np.abs(np.cos(2.5 * t))), True)],
    "kite": [(np.array([[0.0, -1.0], [0.62, -0.25], [0.0, 1.0], [-0.62, -0.25]]), True)],
}
# How far each shape reaches from its centre, in radii.
REACH: Dict[str, float] = {name: max(float(np.linalg.norm(p, axis=1).max()) for p, filled in parts if filled)
                           for name, parts in SHAPES.items()}

_SPRINKLES = np.array([(0.71 * np.cos(a), 0.71 * np.sin(a)) for a in np.arange(9) * 2 * np.pi / 9 + 0.3])
_SPRINKLE_PAINT = np.array([[60, 120, 230], [250, 220, 40]], dtype=np.float32)
_HOLES = np.array([[-0.45, 0.3, 0.16], [0.2, 0.25, 0.13], [0.45, -0.15, 0.1], [-0.05, -0.05, 0.09]])


def to_pixels(polygon: Polygon, x: float, y: float, radius: float, angle: float) -> List[Tuple[float, float]]:
    """Rotate by ``angle``, scale by ``radius`` and move to (x, y) pixels."""
    c, s = np.cos(angle), np.sin(angle)
    px = x + radius * (polygon[:, 0] * c - polygon[:, 1] * s)
    py = y + radius * (polygon[:, 0] * s + polygon[:, 1] * c)
    return list(zip(px.tolist(), py.tolist()))


def object_mask(shape: str, x: float, y: float, radius: float, angle: float, res: int) -> Image.Image:
    """``res x res`` 8-bit mask (255 inside) of one object, in pixel units."""
    mask = Image.new("L", (res, res), 0)
    draw = ImageDraw.Draw(mask)
    for polygon, filled in SHAPES[shape]:
        draw.polygon(to_pixels(polygon, x, y, radius, angle), fill=255 if filled else 0)
    return mask


def local_coords(xs: np.ndarray, ys: np.ndarray, x: float, y: float, radius: float,
                 angle: float) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel grids ``H x W`` -> the object's unit coordinates ``(u, v)``."""
    dx, dy = xs - x, ys - y
    c, s = np.cos(angle), np.sin(angle)
    return (dx * c + dy * s) / radius, (-dx * s + dy * c) / radius


def paint(texture: str, u: np.ndarray, v: np.ndarray, base: np.ndarray, detail: np.ndarray,
          shaded: bool = True) -> np.ndarray:
    """Colours ``H x W x 3`` (float, 0..255) of an object's ``texture`` at local coordinates
    (``shaded``: lit like a photographed object, else flat)."""
    r2 = u ** 2 + v ** 2
    shade = (1.08 - 0.22 * np.clip(r2, 0.0, 1.0))[..., None] if shaded else np.ones(u.shape + (1,))
    out = np.broadcast_to(base, u.shape + (3,)) * shade
    if texture == "highlight":
        out = np.where((((u + 0.35) ** 2 + (v + 0.3) ** 2) < 0.03)[..., None], 0.5 * out + 125, out)
        spot = v < -0.75
    elif texture == "band":
        spot = np.abs(v) < 0.22
    elif texture == "sprinkles":
        dist = (u[..., None] - _SPRINKLES[:, 0]) ** 2 + (v[..., None] - _SPRINKLES[:, 1]) ** 2
        nearest = dist.argmin(-1)
        dots = dist.min(-1) < 0.012
        colours = np.where((nearest % 3 == 0)[..., None], detail, _SPRINKLE_PAINT[nearest % 2])
        return np.where(dots[..., None], colours, out)
    elif texture == "pores":
        spot = (np.sin(u * 11) * np.sin(v * 11)) > 0.8
    elif texture == "eye":
        spot = ((u + 0.6) ** 2 + (v + 0.08) ** 2) < 0.012
    elif texture == "mortar":
        joints = np.where(v < 0, np.abs(u), np.abs(np.abs(u) - 0.5))  # staggered rows of bricks
        spot = (np.abs(v) < 0.06) | (joints < 0.06)
    elif texture == "holes":
        dist2 = (u[..., None] - _HOLES[:, 0]) ** 2 + (v[..., None] - _HOLES[:, 1]) ** 2
        spot = (dist2 < _HOLES[:, 2] ** 2).any(-1)
    elif texture == "trunk":
        spot = v > 0.45
    elif texture == "centre":
        spot = r2 < 0.09
    elif texture == "cross":
        spot = (np.abs(u) < 0.05) | (np.abs(v + 0.25) < 0.05)
    else:
        return out
    return np.where(spot[..., None], detail, out)

"""Children's drawings made up for the demo: a house, a sun and a stick figure whose detail
grows with the child's age (more parts, straighter lines, more colours), and unusual ones
(scribbles, solid fills, noise, a drawing far below the age's level).

Reason to change: what the demo's drawings look like.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawing(age: float, rng: np.random.Generator) -> bytes:
    """Older children draw more parts, straighter lines and more colours."""
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    level = int(np.clip((age - 3) / 3, 0, 2))  # 0: ages 3-6, 1: 6-9, 2: 9-12
    jitter = (2 - level) * 2 + 1
    colours = [(0, 0, 0)] if level == 0 else [(0, 0, 0), (200, 30, 30), (30, 90, 200), (20, 150, 40)][: level + 2]

    def j() -> int:
        return int(rng.integers(-jitter, jitter + 1))

    # the house
    x, y = 8 + j(), 30 + j()
    draw.rectangle([x, y, x + 22, y + 22], outline=colours[0], width=1 + level)
    draw.polygon([(x - 2, y), (x + 11 + j(), y - 12), (x + 24, y)], outline=colours[-1])
    if level >= 1:
        draw.rectangle([x + 8, y + 10, x + 14, y + 22], outline=colours[1])  # a door
    if level >= 2:
        draw.rectangle([x + 3, y + 4, x + 7, y + 8], outline=colours[2])  # windows
        draw.rectangle([x + 15, y + 4, x + 19, y + 8], outline=colours[2])
    # the sun, with more rays as the child grows
    cx, cy = 50 + j(), 12 + j()
    draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], outline=colours[min(1, len(colours) - 1)])
    for k in range(3 + 3 * level):
        angle = 2 * math.pi * k / (3 + 3 * level)
        draw.line(
            [cx + 7 * math.cos(angle), cy + 7 * math.sin(angle), cx + 11 * math.cos(angle), cy + 11 * math.sin(angle)],
            fill=colours[-1],
        )
    # a stick figure
    fx, fy = 46 + j(), 38 + j()
    draw.ellipse([fx - 3, fy - 3, fx + 3, fy + 3], outline=colours[0])
    draw.line([fx, fy + 3, fx, fy + 13], fill=colours[0])
    draw.line([fx, fy + 13, fx - 4 + j(), fy + 20], fill=colours[0])
    draw.line([fx, fy + 13, fx + 4 + j(), fy + 20], fill=colours[0])
    if level >= 1:
        draw.line([fx - 5, fy + 6, fx + 5, fy + 6], fill=colours[0])  # arms
    return _png(image)


def scribble(rng: np.random.Generator) -> bytes:
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    points = [tuple(int(v) for v in rng.integers(0, SIZE, 2)) for _ in range(25)]
    draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=2)
    return _png(image)


def solid_fill(rng: np.random.Generator) -> bytes:
    return _png(Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(0, 255, 3))))


def noise(rng: np.random.Generator) -> bytes:
    return _png(Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)))


def unusual(rng: np.random.Generator, age: float) -> bytes:
    """One of the unusual kinds, in turn; for older children also a drawing far below their level."""
    kinds: list[Callable[[np.random.Generator], bytes]] = [scribble, solid_fill, noise]
    if age >= 9:
        kinds.append(lambda r: drawing(3.5, r))
    return kinds[int(rng.integers(0, len(kinds)))](rng)

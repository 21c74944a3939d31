"""A made-up image library for similarity, grouping and tags: three recurring subjects, each
in its usual scene (a face on a white background, a house on grass, a car under a sky), drawn
with variations (position, size, rotation, colour, noise) and details that become tags
("face, smile, glasses, red"); now and then a subject stands in another subject's scene.

`generate_library` writes the images and their `metadata.csv` (id, file_name, subject, tags)
the way a user drops an image dataset; `make_items` draws more of the same kind with another
seed (held-out items), or of a subject the library does not hold (`NOVEL_SUBJECT`).

Reason to change: what the library's images and tags look like.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUBJECTS = ("face", "house", "car")
NOVEL_SUBJECT = "boat"  # drawn on request only: a subject the library never shows
SCENES = {"face": "white", "house": "grass", "car": "sky", "boat": "water"}
COLOURS = {
    "red": (200, 40, 40),
    "blue": (40, 70, 200),
    "yellow": (230, 200, 40),
    "green": (40, 150, 60),
    "purple": (130, 50, 160),
}
# How often each detail is drawn (each one becomes a tag).
DETAILS = {
    "face": {"smile": 0.5, "glasses": 0.4},
    "house": {"chimney": 0.5},
    "car": {"headlights": 0.5},
    "boat": {"sail": 0.5},
}
SUN, MOON = 0.15, 0.1  # shares of items with a sun, with a moon (never both)
OTHER_SCENE = 0.02  # share of items drawn in another subject's scene
MAX_SHIFT = 18  # pixels
SCALE = (0.7, 1.25)
MAX_ROTATION = 25.0  # degrees
MAX_NOISE = 12.0  # Gaussian sigma, in grey levels
METADATA_FILE = "metadata.csv"
IMAGES_FOLDER = "images"
BLACK = (20, 20, 20)


@dataclass(frozen=True)
class LibraryItem:
    id: str
    file_name: str  # relative to the images folder
    subject: str
    tags: tuple[str, ...]  # the subject first, then the colour and the details
    image: bytes  # PNG

    @property
    def detail_tags(self) -> tuple[str, ...]:
        """The tags beyond the subject."""
        return tuple(t for t in self.tags if t != self.subject)


def generate_library(
    folder: Path, *, per_subject: int = 80, seed: int = 0, subjects: tuple[str, ...] = SUBJECTS
) -> list[LibraryItem]:
    """Writes `per_subject` images of each subject under `folder/images/` and
    `folder/metadata.csv` (columns id, file_name, subject, tags; tags comma-separated), in a
    shuffled order. The same arguments write the same bytes."""
    items = make_items(per_subject, seed=seed, subjects=subjects)
    (folder / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
    for item in items:
        (folder / IMAGES_FOLDER / item.file_name).write_bytes(item.image)
    partial = folder / (METADATA_FILE + ".tmp")
    with partial.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "file_name", "subject", "tags"])
        for item in items:
            writer.writerow([item.id, item.file_name, item.subject, ", ".join(item.tags)])
    partial.replace(folder / METADATA_FILE)
    return items


def make_items(
    per_subject: int, *, seed: int, subjects: tuple[str, ...] = SUBJECTS, prefix: str = "item"
) -> list[LibraryItem]:
    """`per_subject` items of each subject, shuffled, ids `<prefix>-<seed>-<n>`. Another seed
    draws other items of the same distribution (held-out items)."""
    rng = np.random.default_rng(seed)
    order = [s for s in subjects for _ in range(per_subject)]
    rng.shuffle(order)
    items = []
    for n, subject in enumerate(order):
        image, tags = draw(subject, rng)
        item_id = f"{prefix}-{seed}-{n:04d}"
        items.append(LibraryItem(item_id, f"{item_id}.png", subject, tags, _png(image)))
    return items


def draw(subject: str, rng: np.random.Generator) -> tuple[Image.Image, tuple[str, ...]]:
    """One image of `subject` and its tags."""
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    details = [name for name, share in DETAILS[subject].items() if rng.random() < share]
    sky = rng.random()
    light = "sun" if sky < SUN else "moon" if sky < SUN + MOON else None
    scene = SCENES[subject]
    if rng.random() < OTHER_SCENE:
        scene = str(rng.choice([s for s in SCENES.values() if s != scene]))
    image = _background(scene)
    if light is not None:
        _light(image, light, rng)
    layer = _subject_layer(subject, COLOURS[colour], details)
    image = _place(image, layer, rng)
    image = _noisy(image, rng)
    tags = (subject, colour, *details, *([light] if light else []))
    return image, tags


def _background(scene: str) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    if scene == "grass":
        draw.rectangle([0, 0, SIZE, SIZE], fill=(70, 160, 60))
        draw.rectangle([0, 0, SIZE, 14], fill=(190, 225, 170))  # a pale horizon
    elif scene == "sky":
        draw.rectangle([0, 0, SIZE, SIZE], fill=(110, 170, 235))
        draw.rectangle([0, 48, SIZE, SIZE], fill=(110, 110, 110))  # the road
    elif scene == "water":
        draw.rectangle([0, 0, SIZE, SIZE], fill=(225, 235, 245))
        draw.rectangle([0, 36, SIZE, SIZE], fill=(20, 60, 120))
    return image


def _light(image: Image.Image, light: str, rng: np.random.Generator) -> None:
    x, y = int(rng.integers(9, 20)), int(rng.integers(8, 14))
    x = SIZE - x if rng.random() < 0.5 else x
    behind = image.getpixel((x + 5, y - 4))  # the scene's colour: the crescent's shadow
    draw = ImageDraw.Draw(image)
    if light == "sun":
        draw.ellipse([x - 7, y - 7, x + 7, y + 7], fill=(250, 210, 30))
        for k in range(8):
            angle = 2 * math.pi * k / 8
            draw.line(
                [x + 8 * math.cos(angle), y + 8 * math.sin(angle), x + 12 * math.cos(angle), y + 12 * math.sin(angle)],
                fill=(250, 180, 30),
                width=2,
            )
    else:
        draw.ellipse([x - 7, y - 7, x + 7, y + 7], fill=(225, 225, 150), outline=(120, 120, 90))
        draw.ellipse([x - 3, y - 9, x + 9, y + 3], fill=behind)


def _subject_layer(subject: str, colour: tuple[int, int, int], details: list[str]) -> Image.Image:
    """The subject on a transparent 64x64 layer, centred, before it is moved, scaled and turned."""
    layer = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if subject == "face":
        draw.ellipse([14, 10, 50, 54], fill=colour, outline=BLACK, width=2)
        draw.ellipse([23, 24, 28, 29], fill=BLACK)
        draw.ellipse([36, 24, 41, 29], fill=BLACK)
        if "smile" in details:  # a wide open smile
            draw.chord([20, 28, 44, 50], start=0, end=180, fill=(90, 10, 10), outline=BLACK)
        else:
            draw.line([25, 42, 39, 42], fill=BLACK, width=2)
        if "glasses" in details:  # dark glasses
            draw.ellipse([18, 20, 31, 32], fill=(10, 10, 10))
            draw.ellipse([33, 20, 46, 32], fill=(10, 10, 10))
            draw.line([14, 24, 50, 24], fill=(10, 10, 10), width=2)
    elif subject == "house":
        draw.rectangle([13, 28, 51, 56], fill=colour, outline=BLACK, width=1)
        draw.polygon([(9, 28), (32, 10), (55, 28)], fill=(120, 50, 30), outline=BLACK)
        draw.rectangle([28, 44, 36, 56], fill=(90, 60, 30))
        draw.rectangle([17, 33, 23, 39], fill=(230, 240, 255), outline=BLACK)
        draw.rectangle([41, 33, 47, 39], fill=(230, 240, 255), outline=BLACK)
        if "chimney" in details:  # a chimney and its smoke
            draw.rectangle([40, 8, 47, 22], fill=(90, 40, 30), outline=BLACK)
            draw.ellipse([38, 0, 50, 8], fill=(150, 150, 150))
            draw.ellipse([46, -4, 60, 6], fill=(170, 170, 170))
    elif subject == "car":
        draw.polygon([(22, 26), (40, 26), (46, 34), (18, 34)], fill=colour, outline=BLACK)
        draw.rectangle([12, 34, 52, 45], fill=colour, outline=BLACK)
        draw.polygon([(24, 28), (30, 28), (30, 34), (21, 34)], fill=(200, 230, 250))
        draw.polygon([(33, 28), (39, 28), (43, 34), (33, 34)], fill=(200, 230, 250))
        draw.ellipse([16, 40, 26, 50], fill=BLACK)
        draw.ellipse([38, 40, 48, 50], fill=BLACK)
        if "headlights" in details:  # lit, with their beam
            draw.polygon([(54, 39), (64, 32), (64, 48)], fill=(255, 250, 170))
            draw.ellipse([48, 36, 55, 42], fill=(255, 245, 150), outline=BLACK)
    elif subject == "boat":
        draw.polygon([(8, 38), (56, 38), (48, 48), (16, 48)], fill=colour, outline=BLACK)
        draw.line([32, 12, 32, 38], fill=BLACK, width=2)
        if "sail" in details:
            draw.polygon([(33, 12), (33, 36), (50, 36)], fill=(245, 245, 235), outline=BLACK)
    else:
        raise ValueError(f"unknown subject {subject!r}")
    return layer


def _place(image: Image.Image, layer: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The layer turned, scaled and shifted about the image centre, then laid over the scene."""
    angle = math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    scale = rng.uniform(*SCALE)
    dx, dy = rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2)
    # The inverse map (output pixel -> layer pixel) that Image.transform takes.
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    centre = SIZE / 2
    ox, oy = centre + dx, centre + dy
    coefficients = (cos, sin, centre - cos * ox - sin * oy, -sin, cos, centre + sin * ox - cos * oy)
    moved = layer.transform((SIZE, SIZE), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR)
    out = image.convert("RGBA")
    out.alpha_composite(moved)
    return out.convert("RGB")


def _noisy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    sigma = rng.uniform(0, MAX_NOISE)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, sigma, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

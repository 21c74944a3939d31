"""Files given as items to embed or score: images by their suffix, `.txt` files as texts.

Reason to change: which files count as images or texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"})
TEXT_SUFFIXES = frozenset({".txt"})


@dataclass(frozen=True)
class Items:
    """Either images (encoded bytes) or texts, one per file, in the files' order."""

    files: list[Path]
    images: list[bytes]
    texts: list[str]

    @property
    def kind(self) -> str:
        return "image" if self.images else "text"


def read_items(files: list[Path]) -> Items:
    """Images or texts from `files`; a mix of both, or another suffix, is a usage error."""
    unknown = [f.name for f in files if f.suffix.lower() not in IMAGE_SUFFIXES | TEXT_SUFFIXES]
    if unknown:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES | TEXT_SUFFIXES))
        raise typer.BadParameter(f"{', '.join(unknown)}: give {suffixes} files", param_hint="FILES")
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if images and len(images) != len(files):
        raise typer.BadParameter("give images or .txt files, not both at once", param_hint="FILES")
    if images:
        return Items(files, [f.read_bytes() for f in files], [])
    return Items(files, [], [f.read_text(encoding="utf-8").strip() for f in files])

"""A served encoder: an exported ONNX graph, its preprocessing, and one inference call per
batch on the runtime chosen at export (backends.py). Needs onnxruntime (or openvino),
tokenizers and Pillow; never torch.

Reason to change: how one exported encoder runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from oddity.common.errors import InvalidArgument
from oddity.embedder.backends import open_backend
from oddity.embedder.models import read_meta
from oddity.embedder.preprocessing import ImageLimits, ImagePreprocessor, TextPreprocessor, check_texts
from oddity.embedder.session_options import SessionConfig

IMAGE_SUB_BATCH = 4  # images per ONNX call within a batch
TEXT_SUB_BATCH = 32  # texts per ONNX call within a batch, grouped by length
TEXT_LENGTH_STEP = 8  # texts run padded to a multiple of this many tokens


@dataclass(frozen=True)
class Item:
    """One request item: encoded image bytes or text."""

    image: bytes | None = None
    text: str | None = None


class EmbeddingModel:
    def __init__(self, name: str, folder: Path, *, limits: ImageLimits, session: SessionConfig | None = None) -> None:
        self.name = name
        self.folder = folder
        self.meta = read_meta(folder)
        self.modality: str = self.meta["modality"]
        self.dimension: int = int(self.meta["dimension"])
        self.session_config = session or SessionConfig()
        self.backend = open_backend(
            folder / self.meta["graph"], self.meta["backend"], self.meta["precision"], self.session_config
        )
        if self.modality == "image":
            self._images = ImagePreprocessor(self.meta["preprocessing"], limits)
        else:
            self._texts = TextPreprocessor(folder, self.meta["preprocessing"])
            self._pad_id = int(self.meta["preprocessing"]["pad_id"])
            self._max_tokens = int(self.meta["preprocessing"]["max_length"])

    def check(self, items: list[Item], first_index: int = 0) -> None:
        """Cheap checks before queueing: every item has the model's modality."""
        for offset, item in enumerate(items):
            if (item.image if self.modality == "image" else item.text) is None:
                other = "text" if self.modality == "image" else "an image"
                raise InvalidArgument(
                    f"item {first_index + offset}: model {self.name!r} embeds {self.modality}s, the item is {other}"
                )

    def prepare(self, items: list[Item], first_index: int = 0) -> dict[str, np.ndarray]:
        """Decode and preprocess (raises InvalidArgument naming the item)."""
        if self.modality == "image":
            return {"pixel_values": self._images(_images(items), first_index)}
        return self._texts(_texts(items), first_index)

    def request_payload(self, items: list[Item], first_index: int = 0):
        """The part of preprocessing done per request, so a bad item fails only its own request:
        images are decoded and turned into pixels; texts are checked (tokenized per batch)."""
        if self.modality == "image":
            return self._images(_images(items), first_index)
        return check_texts(_texts(items), first_index)

    def batch_inputs(self, payloads: list) -> dict[str, np.ndarray]:
        """The model inputs of several requests' payloads: pixels stacked, texts tokenized
        (padded to the batch's longest)."""
        if self.modality == "image":
            return {"pixel_values": np.concatenate(payloads)}
        return self._texts([text for texts in payloads for text in texts])

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        mask = inputs.get("attention_mask")
        if mask is None:
            # Images in calls of IMAGE_SUB_BATCH: a ViT-base MLP activation of 32 images
            # (32 x 197 x 3072 floats, 77 MB) spills the L3 cache that 4 images' fit in;
            # measured 9% (fp32) to 12% (int8) less time per image than one call of 32.
            count = len(next(iter(inputs.values())))
            if count <= IMAGE_SUB_BATCH:
                return self.backend(inputs)
            return np.concatenate(
                [
                    self.backend({name: value[start : start + IMAGE_SUB_BATCH] for name, value in inputs.items()})
                    for start in range(0, count, IMAGE_SUB_BATCH)
                ]
            )
        # Texts padded to the batch's longest waste compute on padding. Each text runs padded
        # to its own length rounded up to TEXT_LENGTH_STEP instead, with texts of the same
        # rounded length together: less padding (~10-15% more sentences/s on short sentences
        # of mixed lengths), and a text's embedding no longer depends on the other texts of
        # its batch (identical texts give identical vectors, which training relies on).
        lengths = mask.sum(axis=1)
        padded = np.minimum(-(-lengths // TEXT_LENGTH_STEP) * TEXT_LENGTH_STEP, self._max_tokens)
        rows = np.empty((len(mask), self.dimension), np.float32)
        for length in np.unique(padded):
            picked = np.flatnonzero(padded == length)
            for start in range(0, len(picked), TEXT_SUB_BATCH):
                part = picked[start : start + TEXT_SUB_BATCH]
                rows[part] = self.backend(
                    {name: self._width(name, value[part], int(length)) for name, value in inputs.items()}
                )
        return rows

    def _width(self, name: str, value: np.ndarray, length: int) -> np.ndarray:
        """Token columns cut or padded (right, as the tokenizer pads) to `length`."""
        if value.shape[1] >= length:
            return value[:, :length]
        fill = self._pad_id if name == "input_ids" else 0
        return np.pad(value, ((0, 0), (0, length - value.shape[1])), constant_values=fill)

    def embed(self, items: list[Item]) -> np.ndarray:
        return self.run(self.prepare(items))

    def info(self) -> dict:
        return {
            "name": self.name,
            "model_id": self.meta["model_id"],
            "revision": self.meta["revision"],
            "dimension": self.dimension,
            "modality": self.modality,
            "precision": self.meta["precision"],
            "preprocessing": {k: str(v) for k, v in self.meta["preprocessing"].items()},
        }


# check() has proved that every item carries the model's modality.
def _images(items: list[Item]) -> list[bytes]:
    return cast(list[bytes], [i.image for i in items])


def _texts(items: list[Item]) -> list[str]:
    return cast(list[str], [i.text for i in items])

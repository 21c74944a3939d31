"""Turning request items into model inputs, without torch or transformers: images with
Pillow + numpy (the same steps as the model's own image processor), text with the
`tokenizers` library.

Reason to change: how images and texts become model inputs.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from oddity.common.errors import InvalidArgument

IMAGE_FORMATS = {"PNG", "JPEG", "BMP", "WEBP", "GIF", "MPO"}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # decompression bombs: decoded size, not file size


def decode_image(data: bytes, index: int, limits: ImageLimits) -> Image.Image:
    """Encoded bytes -> an RGB image, upright (EXIF orientation applied), first frame only."""
    if not data:
        raise InvalidArgument(f"item {index}: empty image")
    if len(data) > limits.max_bytes:
        raise InvalidArgument(f"item {index}: image has {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            if image.format not in IMAGE_FORMATS:
                raise InvalidArgument(
                    f"item {index}: {image.format} images are not accepted (PNG, JPEG, BMP, WebP, GIF)"
                )
            width, height = image.size
            if width * height > limits.max_pixels:
                raise InvalidArgument(
                    f"item {index}: image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels"
                )
            image.seek(0)
            image = ImageOps.exif_transpose(image)
            if image.mode != "RGB":
                # Palette and grayscale images become RGB; transparency is laid on white.
                if image.mode in ("RGBA", "LA", "P"):
                    rgba = image.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(background, rgba)
                image = image.convert("RGB")
            image.load()
            return image
    except InvalidArgument:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        SyntaxError,
    ) as exc:
        raise InvalidArgument(f"item {index}: not a readable image ({type(exc).__name__}: {exc})") from exc


class ImagePreprocessor:
    """resize -> (center crop) -> rescale -> normalize -> CHW, as the exported processor did."""

    def __init__(self, config: dict, limits: ImageLimits) -> None:
        self.config = config
        self.limits = limits
        mean, std = config.get("mean"), config.get("std")
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3) if mean else None
        self.std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3) if std else None
        self.resample = Image.Resampling(config["resample"])

    def _resize(self, image: Image.Image) -> Image.Image:
        resize = self.config["resize"]
        if "height" in resize:
            return image.resize((resize["width"], resize["height"]), self.resample)
        shortest = resize["shortest_edge"]
        width, height = image.size
        # As transformers' get_resize_output_image_size: the short side becomes `shortest`,
        # the long side keeps the aspect ratio (rounded down).
        if width <= height:
            size = (shortest, max(1, int(shortest * height / width)))
        else:
            size = (max(1, int(shortest * width / height)), shortest)
        return image.resize(size, self.resample)

    def _crop(self, array: np.ndarray) -> np.ndarray:
        crop = self.config.get("crop")
        if not crop:
            return array
        height, width = array.shape[:2]
        top, left = (height - crop["height"]) // 2, (width - crop["width"]) // 2
        return array[max(0, top) : max(0, top) + crop["height"], max(0, left) : max(0, left) + crop["width"]]

    def __call__(self, items: list[bytes], first_index: int = 0) -> np.ndarray:
        batch = np.empty((len(items), 3, self.config["input_height"], self.config["input_width"]), np.float32)
        for offset, data in enumerate(items):
            image = self._resize(decode_image(data, first_index + offset, self.limits))
            array = self._crop(np.asarray(image, dtype=np.float32)) * self.config["rescale_factor"]
            if self.mean is not None:
                array = (array - self.mean) / self.std
            batch[offset] = array.transpose(2, 0, 1)
        return batch


def check_texts(texts: list[str], first_index: int = 0) -> list[str]:
    """Refuse empty texts, naming the item."""
    for offset, text in enumerate(texts):
        if not text.strip():
            raise InvalidArgument(f"item {first_index + offset}: empty text")
    return texts


class TextPreprocessor:
    """Tokenization with truncation to the model's maximum length and per-batch padding."""

    def __init__(self, folder: Path, config: dict) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=config["max_length"])
        self.tokenizer.enable_padding(pad_id=config["pad_id"])
        self.inputs = config["inputs"]

    def __call__(self, texts: list[str], first_index: int = 0) -> dict[str, np.ndarray]:
        check_texts(texts, first_index)
        encoded = self.tokenizer.encode_batch(texts)
        columns = {
            "input_ids": [e.ids for e in encoded],
            "attention_mask": [e.attention_mask for e in encoded],
            "token_type_ids": [e.type_ids for e in encoded],
        }
        return {name: np.asarray(columns[name], dtype=np.int64) for name in self.inputs}

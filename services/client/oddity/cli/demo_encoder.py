"""An image model a stack can always load: when the embedder's image model (a hub id by
default) is neither a local folder nor in the local Hugging Face cache, and no `--model`
names `vit`, a small ViT with random weights is made in `<folder>/demo/small-vit` with
transformers and saved with `save_pretrained`; the embedder exports and serves it as `vit`
like any checkpoint (`oddity up` and `oddity demo --start` both do so). Random weights still
map unusual drawings (noise, solid fills, scribbles) far from ordinary ones; real weights
do better.

This is the client's only torch/transformers code, imported only when that model is made
(`pip install "oddity-embedder[export]"` brings both).

Reason to change: how a stack finds or makes an image model that loads offline.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from oddity.cli.stack import EmbedderModel

MODEL_NAME = "vit"  # the embedder model the drawings dataset names
IMAGE_SIZE = 64  # the drawings' size: no resizing
SEED = 0


SMALL_VIT_FOLDER = Path("demo") / "small-vit"  # in the stack's folder


class EncoderUnavailable(Exception):
    """No image model can be loaded offline and none can be made here (one line: what to install)."""


def default_image_model_id() -> str | None:
    """The embedder's default image model id, when the embedder is installed."""
    try:
        settings = importlib.import_module("oddity.embedder.settings")
    except ImportError:
        return None
    source = settings.default_models().get(MODEL_NAME)
    return None if source is None else str(source.model_id)


def loads_offline(model_id: str) -> bool:
    """A local folder, or a hub id whose files are in the local Hugging Face cache."""
    if Path(model_id).is_dir():
        return True
    try:
        hub = importlib.import_module("huggingface_hub")
    except ImportError:
        return False
    cached = hub.try_to_load_from_cache(model_id, "config.json")
    weights = [hub.try_to_load_from_cache(model_id, f) for f in ("model.safetensors", "pytorch_model.bin")]
    return isinstance(cached, str) and any(isinstance(w, str) for w in weights)


def offline_image_model(root: Path, models: tuple[EmbedderModel, ...]) -> EmbedderModel | None:
    """The small ViT of the stack's folder `root` as `vit`, when `models` name no vit and the
    embedder's default does not load offline; else None. EncoderUnavailable when it cannot be made."""
    if any(m.name == MODEL_NAME for m in models):
        return None
    default = default_image_model_id()
    if default is not None and loads_offline(default):
        return None
    made = small_vit(root / SMALL_VIT_FOLDER)
    return EmbedderModel(MODEL_NAME, str(made.resolve()), "image")


def small_vit(folder: Path) -> Path:
    """A ViT (2 layers, 64 wide) for 64x64 images in `folder`, made once and kept: the embedder
    caches its export by the folder's files, so the same files are not exported again."""
    if (folder / "config.json").exists() and (folder / "preprocessor_config.json").exists():
        return folder
    try:
        torch = importlib.import_module("torch")
        transformers = importlib.import_module("transformers")
    except ImportError as exc:
        raise EncoderUnavailable(
            f"no image model loads offline and {exc.name} is missing to make a small one: "
            'pip install "oddity-embedder[export]", or give one: --model vit=/path/to/local/dir'
        ) from None
    transformers.logging.set_verbosity_error()  # e.g. the note that torchvision is not installed
    transformers.logging.disable_progress_bar()
    torch.manual_seed(SEED)
    hidden = 64
    config = transformers.ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        image_size=IMAGE_SIZE,
        patch_size=16,
    )
    partial = folder.with_name(folder.name + ".partial")
    for leftover in (partial, folder):  # from a run that was stopped while saving
        shutil.rmtree(leftover, ignore_errors=True)
    transformers.ViTModel(config).eval().save_pretrained(partial)
    transformers.ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(partial)
    partial.replace(folder)
    return folder

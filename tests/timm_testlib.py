"""timm without a network: a Hugging Face hub cache made here, and a by-hand reference.

`hub_cache_with(cache, model, tag)` saves a (random-init) timm model the way the hub hosts
timm weights (`timm.models.save_for_hf`: model.safetensors + config.json, or
`torch.save` of the state dict as pytorch_model.bin) and lays the files out as
`hf download` leaves them (the hub's documented cache layout, checked in the tests with
`huggingface_hub.scan_cache_dir`):

    <cache>/models--timm--<tag>/blobs/<sha256 of an LFS file | git blob sha1 of a small one>
    <cache>/models--timm--<tag>/snapshots/<commit>/<file>  -> ../../blobs/<...>
    <cache>/models--timm--<tag>/refs/main                  (the commit)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

LFS_SUFFIXES = (".safetensors", ".bin")


def blob_name(path: Path) -> str:
    """The hub's blob name: the sha256 of an LFS file, else the git blob sha1."""
    data = path.read_bytes()
    if path.suffix in LFS_SUFFIXES:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hub_cache_with(cache: Path, model: nn.Module, tag: str, safetensors: bool = True) -> Path:
    """Put `model`'s weights into `cache` as the hub repo `timm/<tag>`.

    Returns:
        The snapshot's weights file (model.safetensors or pytorch_model.bin).
    """
    import timm.models

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp)
        if safetensors:
            timm.models.save_for_hf(model, str(saved), safe_serialization=True)
            (saved / "pytorch_model.bin").unlink(missing_ok=True)
        else:
            timm.models.save_for_hf(model, str(saved), safe_serialization=False)
            torch.save(model.state_dict(), saved / "pytorch_model.bin")
            (saved / "model.safetensors").unlink(missing_ok=True)
        files = sorted(p for p in saved.iterdir() if p.is_file())
        commit = hashlib.sha1(b"".join(blob_name(p).encode() for p in files)).hexdigest()
        repo = cache / f"models--timm--{tag}"
        snapshot = repo / "snapshots" / commit
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        snapshot.mkdir(parents=True, exist_ok=True)
        for path in files:
            blob = repo / "blobs" / blob_name(path)
            shutil.copyfile(path, blob)
            os.symlink(Path("..") / ".." / "blobs" / blob.name, snapshot / path.name)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    name = "model.safetensors" if safetensors else "pytorch_model.bin"
    return snapshot / name


# -- small timm models and an independent reference of what the pipeline does with them --

VIT = "test_vit.r160_in1k"  # ViT family: patch embedding, fixed 160 px input, bicubic
CONV = "test_resnet.r160_in1k"  # convolutional, bilinear
FILTERS = {"bicubic": 3, "bilinear": 2}  # PIL.Image.Resampling values


def random_timm(tag: str, seed: int, **kwargs) -> nn.Module:
    """A random-init timm test model with a spread-out classifier (logits far apart, so a
    wrong pixel or weight shows), in eval mode."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(tag, **kwargs).eval()
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.mul_(20.0)
    return model


def state_from_file(path: Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors, read with safetensors or torch.load by hand."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def hand_model(tag: str, weights: Path, num_classes: int | None = None) -> nn.Module:
    """`timm.create_model(tag)` with the file's tensors loaded by hand, in float64."""
    import timm

    extra = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(tag, **extra)
    model.load_state_dict(state_from_file(weights))
    return model.double().eval()


def eval_box(height: int, width: int, crop_pct: float) -> tuple[int, int, int, int]:
    """timm's eval crop as a box in source pixels: the centred square of crop_pct of the
    short side (top, left, h, w)."""
    side = round(min(height, width) * crop_pct)
    return round((height - side) / 2), round((width - side) / 2), side, side


def hand_pixels(path: Path, box, flip: bool, size: int, interpolation: str) -> torch.Tensor:
    """PIL: open, RGB, crop the box, resize, flip: float64 [3, size, size] in 0..255."""
    import numpy as np
    from PIL import Image

    top, left, h, w = (int(v) for v in box)
    with Image.open(path) as image:
        view = image.convert("RGB").crop((left, top, left + w, top + h))
        view = view.resize((size, size), FILTERS[interpolation])
    if flip:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(view, dtype=np.float64).copy()).permute(2, 0, 1)


def hand_logits(model: nn.Module, pixels: list[torch.Tensor], mean, std) -> torch.Tensor:
    """float64 forward of (pixels / 255 - mean) / std, normalised by hand ([N, C])."""
    m = torch.tensor(mean, dtype=torch.float64)[:, None, None]
    s = torch.tensor(std, dtype=torch.float64)[:, None, None]
    x = torch.stack([(p / 255.0 - m) / s for p in pixels])
    with torch.no_grad():
        return model(x)


class TimmHub:
    """A Hugging Face home holding VIT (model.safetensors) and CONV (pytorch_model.bin),
    plus a plain state-dict checkpoint of CONV with other weights."""

    def __init__(self, home: Path) -> None:
        self.home = home  # HF_HOME; the hub cache is home/hub
        self.cache = home / "hub"
        self.files = {
            VIT: hub_cache_with(self.cache, random_timm(VIT, seed=1), VIT, safetensors=True),
            CONV: hub_cache_with(self.cache, random_timm(CONV, seed=2), CONV, safetensors=False),
        }
        self.checkpoint = home.parent / "conv_checkpoint.pt"
        torch.save(random_timm(CONV, seed=3).state_dict(), self.checkpoint)

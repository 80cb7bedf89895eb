"""A Hugging Face hub cache made on this machine, for timm weights without a network.

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

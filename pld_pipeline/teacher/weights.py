"""Weights files: torchvision enums resolved to local files, checkpoints, and their hashes.

Nothing here downloads. A torchvision weights enum ("ResNet50_Weights.IMAGENET1K_V2") is
read from `torch.hub.get_dir()/checkpoints/<file name of the enum's URL>`; a missing file
is a `WeightsNotFoundError` that says where to put it and where to fetch it. Every file is
loaded with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
import torchvision.models._api as tv_api
from torch import nn

from pld_pipeline.errors import ConfigError, WeightsCorruptError, WeightsNotFoundError

# Keys under which training checkpoints commonly keep the model's state dict.
CHECKPOINT_STATE_KEYS = ("model", "state_dict", "model_state_dict", "model_state")
# Prefixes added by DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")
_PATCH_LOCK = threading.Lock()
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def resolve_weights(weights: str, model_name: str | None = None) -> tvm.WeightsEnum:
    """A torchvision WeightsEnum from "ResNet50_Weights.IMAGENET1K_V2" (or "IMAGENET1K_V2"
    / "DEFAULT" when `model_name` is given).

    Raises:
        ConfigError: the string names no weights (the message lists the model's choices).
    """
    try:
        if "." in weights:
            return tvm.get_weight(weights)
        if model_name is not None:
            return tvm.get_model_weights(model_name)[weights]
    except (KeyError, ValueError, AttributeError):
        pass
    choices = []
    if model_name is not None:
        try:
            choices = [str(w) for w in tvm.get_model_weights(model_name)]
        except ValueError:
            choices = []
    raise ConfigError(
        f"Unknown weights {weights!r}; use a torchvision enum like "
        f"'ResNet50_Weights.IMAGENET1K_V2' (for {model_name!r}: {choices})."
    )


def weights_file(enum: tvm.WeightsEnum) -> Path:
    """Local path of a weights enum's file; raises WeightsNotFoundError when absent."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Weights {enum} are not on this machine: expected the file {str(path)}. Fetch "
            f"{enum.url} on a machine with internet and copy it there (or set TORCH_HOME so "
            "that $TORCH_HOME/hub/checkpoints holds it). Nothing is downloaded at run time."
        )
    return path


class local_weights_only:  # noqa: N801 (a context manager)
    """Route torchvision's weight loading to `_load_local`: local file, weights_only=True.

    torchvision builders apply model-specific fixes while loading (densenet key names,
    inception's transform_input, ViT image size), so the builder itself must load the
    weights; it fetches them through `torchvision.models._api.load_state_dict_from_url`,
    which would download a missing file and unpickle with weights_only=False. For the
    duration of the build that name points at `_load_local` instead.
    """

    def __enter__(self) -> None:
        _PATCH_LOCK.acquire()
        self._saved = tv_api.load_state_dict_from_url
        tv_api.load_state_dict_from_url = _load_local

    def __exit__(self, *exc: object) -> None:
        tv_api.load_state_dict_from_url = self._saved
        _PATCH_LOCK.release()


def _load_local(url: str, *args: Any, check_hash: bool = False, **kwargs: Any) -> dict[str, Any]:
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Weights file {str(path)} is missing; fetch {url} on a machine with internet "
            "and copy it there. Nothing is downloaded at run time."
        )
    match = _HASH_IN_NAME.search(path.name)
    if check_hash and match and not sha256_file(path).startswith(match.group(1)):
        raise WeightsCorruptError(
            f"Weights file {str(path)} does not match the hash in its name ({match.group(1)}); "
            f"it is incomplete or altered: delete it and fetch {url} again."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_file(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint's path; raises WeightsNotFoundError when it is not a file."""
    path = Path(checkpoint)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Checkpoint {str(path)!r} does not exist; pass the path of a saved state dict."
        )
    return path


def load_weights_into(model: nn.Module, checkpoint: str | os.PathLike) -> nn.Module:
    """Load a state dict (or a training checkpoint holding one) into `model`, strictly.

    Raises:
        WeightsNotFoundError: the file does not exist.
        WeightsCorruptError: not loadable with weights_only=True, or keys/shapes differ.
    """
    path = checkpoint_file(checkpoint)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise WeightsCorruptError(
            f"Cannot load checkpoint {str(path)!r} with weights_only=True: {exc}. Save plain "
            "state dicts (torch.save(model.state_dict(), path))."
        ) from exc
    state = extract_state_dict(obj, str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsCorruptError(
            f"Checkpoint {str(path)!r} does not fit the model: {str(exc)[:600]}"
        ) from exc
    return model


def extract_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint object, wrapper prefixes removed."""
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in CHECKPOINT_STATE_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            raise WeightsCorruptError(
                f"{where} holds no state dict (keys: {sorted(obj)[:10]}); expected tensors or "
                f"one of {CHECKPOINT_STATE_KEYS}."
            )
    if not isinstance(obj, Mapping):
        raise WeightsCorruptError(f"{where} holds a {type(obj).__name__}, not a state dict.")
    state = {}
    for key, value in obj.items():
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file (cached per path, size and mtime)."""
    stat = os.stat(path)
    cache_key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[cache_key] = digest.hexdigest()
    return _SHA_CACHE[cache_key]


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over a model's state dict (names, dtypes, shapes, bytes in key order).

    Identifies the weights of a factory model that has no single weights file.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()

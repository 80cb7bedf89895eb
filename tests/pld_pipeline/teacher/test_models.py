"""Models by name or factory, local-only weights, weights_only checkpoints, teacher manifest entry."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import pld_pipeline.teacher.weights as weights_mod
from pld_pipeline.configs.demo import DemoConfig
from pld_pipeline.errors import (
    ConfigError,
    ModelNotFoundError,
    WeightsCorruptError,
    WeightsNotFoundError,
)
from pld_pipeline.teacher.models import (
    count_classes,
    create_model,
    load_teacher,
    resolve_preprocess,
    teacher_info,
)
from pld_pipeline.teacher.weights import state_dict_sha256
from pld_pipeline.teacher.zoo import tiny_convnet

TINY = "pld_pipeline.teacher.zoo:tiny_convnet"


class _NotAModel:
    pass


def not_a_model() -> _NotAModel:
    return _NotAModel()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to download."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"download attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


def test_torchvision_by_name_and_factory() -> None:
    model = create_model("mobilenet_v3_small", num_classes=7)
    assert isinstance(model, torchvision.models.MobileNetV3)
    assert not model.training
    assert count_classes(model) == 7
    tiny = create_model(TINY, num_classes=5)
    assert tiny(torch.zeros(2, 3, 16, 16)).shape == (2, 5)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("resnet5O", "close: \\['resnet50'"),
        ("no_such_module_xyz:make", "Cannot import module"),
        ("pld_pipeline.zoo:missing", "has no attribute"),
        (f"{__name__}:not_a_model", "not a torch.nn.Module"),
    ],
)
def test_unknown_models(name: str, fragment: str) -> None:
    with pytest.raises(ModelNotFoundError, match=fragment):
        create_model(name)


def test_missing_weights_say_where_to_put_them(torch_home: Path, no_network: None) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        create_model("resnet18", weights="ResNet18_Weights.IMAGENET1K_V1")
    message = str(info.value)
    assert str(torch_home / "resnet18-f37072fd.pth") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert isinstance(info.value, FileNotFoundError)


def test_enum_weights_load_from_the_hub_folder_weights_only(
    torch_home: Path, no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = torchvision.models.mobilenet_v3_small(num_classes=1000)
    file = torch_home / "mobilenet_v3_small-047dcff4.pth"
    torch.save(source.state_dict(), file)
    # The file's name carries a hash prefix of the official file: ours must be refused...
    with pytest.raises(WeightsCorruptError, match="does not match the hash"):
        create_model("mobilenet_v3_small", weights="MobileNet_V3_Small_Weights.IMAGENET1K_V1")
    # ...and with the check disabled, loaded exactly, through torch.load(weights_only=True).
    monkeypatch.setattr(weights_mod, "_HASH_IN_NAME", re.compile(r"(?!)"))
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    import torchvision.models._api as api

    original = api.load_state_dict_from_url
    model = create_model("mobilenet_v3_small", weights="IMAGENET1K_V1")
    assert calls == [True]
    assert api.load_state_dict_from_url is original  # the local loader is only patched in briefly
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tiny_convnet(num_classes=4)
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    wrapped = tmp_path / "wrapped.pt"
    torch.save(
        {"epoch": 3, "model": {f"module.{k}": v for k, v in source.state_dict().items()}}, wrapped
    )
    for path in (plain, wrapped):
        model = create_model(TINY, num_classes=4, checkpoint=path)
        for name, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[name], value)
    with pytest.raises(WeightsCorruptError, match="does not fit the model"):
        create_model(TINY, num_classes=9, checkpoint=plain)
    with pytest.raises(WeightsNotFoundError, match="nope.pt"):
        create_model(TINY, checkpoint=tmp_path / "nope.pt")
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": _NotAModel()}, pickled)  # arbitrary objects: refused by weights_only
    with pytest.raises(WeightsCorruptError, match="weights_only=True"):
        create_model(TINY, checkpoint=pickled)
    with pytest.raises(ConfigError, match="not both"):
        create_model("resnet18", weights="IMAGENET1K_V1", checkpoint=plain)
    with pytest.raises(ConfigError, match="is a factory"):
        create_model(TINY, weights="ResNet18_Weights.IMAGENET1K_V1")


def test_preprocess_resolution() -> None:
    pre = resolve_preprocess("resnet50", None, "ResNet50_Weights.IMAGENET1K_V2")
    assert pre.input_size == 224
    assert pre.crop_pct == pytest.approx(224 / 232)
    assert pre.interpolation == "bilinear"
    assert pre.mean == (0.485, 0.456, 0.406)
    tiny = tiny_convnet(3)
    pre = resolve_preprocess(TINY, tiny, input_size=20)
    assert (pre.input_size, pre.mean, pre.std) == (20, (0.5,) * 3, (0.25,) * 3)
    plain = resolve_preprocess("m", nn.Linear(2, 2))
    assert (plain.input_size, plain.interpolation, plain.crop_pct) == (224, "bilinear", 0.875)


def test_teacher_info_hashes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_convnet(num_classes=3)
    ckpt = tmp_path / "t.pt"
    torch.save(model.state_dict(), ckpt)
    info = teacher_info(TINY, model, checkpoint=ckpt)
    assert info.weights_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert (info.num_classes, info.input_size, info.interpolation) == (3, 32, "bilinear")
    factory = teacher_info(TINY, model)
    assert factory.weights_source == f"factory:{TINY}"
    assert factory.weights_sha256 == state_dict_sha256(model)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1e-3
    assert state_dict_sha256(model) != factory.weights_sha256


def test_load_teacher_from_config(tmp_path: Path) -> None:
    from pld_pipeline.configs.cache import TeacherConfig

    loaded = load_teacher(
        TeacherConfig(name=TINY, num_classes=6, input_size=24, interpolation="bicubic")
    )
    assert loaded.info.num_classes == 6
    assert loaded.preprocess.input_size == 24
    assert loaded.info.interpolation == "bicubic"
    assert loaded.preprocess.crop_pct == 0.875


@pytest.mark.parametrize(
    ("stored", "new_home"),
    [
        ("pld_pipeline.zoo:tiny_convnet", "pld_pipeline.teacher.zoo:tiny_convnet"),
        ("pld_pipeline.small_models:demo_teacher", "pld_pipeline.demo.small_models:demo_teacher"),
        ("pld_pipeline.small_models:tiny_cnn", "pld_pipeline.demo.small_models:tiny_cnn"),
    ],
)
def test_factory_names_stored_before_the_wings_still_load(stored: str, new_home: str) -> None:
    """Manifests and configs written before the wings move keep the old module paths: the
    alias table resolves them to the same model, and the name is recorded as given."""
    torch.manual_seed(0)
    old = create_model(stored, num_classes=10)
    torch.manual_seed(0)
    new = create_model(new_home, num_classes=10)
    assert type(old) is type(new)
    assert state_dict_sha256(old) == state_dict_sha256(new)
    stored_info = teacher_info(stored, old, num_classes=10)
    assert stored_info.name == stored  # an old cache still compares equal to its config


def test_the_old_module_paths_are_aliases_not_modules() -> None:
    """One alias table, no shim modules: importing the old paths fails."""
    import importlib

    from pld_pipeline.teacher.models import FACTORY_MODULE_ALIASES, resolve_factory_alias

    for old, new in FACTORY_MODULE_ALIASES.items():
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)
        importlib.import_module(new)
        assert resolve_factory_alias(f"{old}:x") == f"{new}:x"
    assert resolve_factory_alias("my.module:build") == "my.module:build"


def test_demo_defaults_name_the_factories_where_they_live() -> None:
    """New manifests store the real factory names."""
    fields = DemoConfig.model_fields
    assert fields["teacher_model"].default == "pld_pipeline.demo.small_models:demo_teacher"
    assert fields["student_model"].default == "pld_pipeline.demo.small_models:demo_student"

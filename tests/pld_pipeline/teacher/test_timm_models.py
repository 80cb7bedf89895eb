"""timm models by `timm:` name: the three weights sources in order (against the files read
by hand), the manifest's identity (sha256 by hand, the hub's own blob name), preprocessing
(against `timm.data.resolve_data_config`), kwargs, and the errors for missing weights, a
missing extra, unknown names and unknown kwargs."""

from __future__ import annotations

import hashlib
import sys

import pytest
import torch
from timm_testlib import CONV, VIT, random_timm, state_from_file

from pld_pipeline.configs.cache import TeacherConfig
from pld_pipeline.errors import (
    ConfigError,
    MissingExtraError,
    ModelNotFoundError,
    WeightsNotFoundError,
)
from pld_pipeline.teacher.models import (
    check_model_available,
    check_teacher_available,
    create_model,
    load_teacher,
    resolve_preprocess,
    state_dict_sha256,
)


def assert_state_equal(model, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_hub_cache_weights_and_their_identity(offline_hub) -> None:
    import huggingface_hub

    scanned = huggingface_hub.scan_cache_dir(offline_hub.cache)  # the layout is the hub's
    assert {repo.repo_id for repo in scanned.repos} == {f"timm/{VIT}", f"timm/{CONV}"}
    assert not scanned.warnings
    for tag, name in ((VIT, "timm:test_vit"), (CONV, f"timm:{CONV}")):
        file = offline_hub.files[tag]
        loaded = load_teacher(TeacherConfig(name=name))  # a teacher is pretrained by default
        assert_state_equal(loaded.model, state_from_file(file))
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        assert loaded.info.weights_sha256 == digest
        assert file.resolve().name == digest  # the hub names an LFS blob by its sha256
        commit = (offline_hub.cache / f"models--timm--{tag}" / "refs" / "main").read_text()
        assert loaded.info.weights_source == f"hf-cache:timm/{tag}@{commit}/{file.name}"
        assert loaded.info.name == f"timm:{tag}"  # the tag, even when the config gave none
        assert loaded.info.num_classes == 1000


def test_a_checkpoint_wins_and_pretrained_false_is_random_init(offline_hub) -> None:
    ckpt = offline_hub.checkpoint
    loaded = load_teacher(TeacherConfig(name=f"timm:{CONV}", checkpoint=str(ckpt)))
    assert_state_equal(loaded.model, torch.load(ckpt, weights_only=True))
    assert loaded.info.weights_source == str(ckpt)
    assert loaded.info.weights_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()

    torch.manual_seed(5)
    fresh = load_teacher(TeacherConfig(name=f"timm:{CONV}", pretrained=False))
    import timm

    torch.manual_seed(5)
    assert_state_equal(fresh.model, timm.create_model(CONV).state_dict())
    assert fresh.info.weights_source == f"random-init:timm:{CONV}"
    assert fresh.info.weights_sha256 == state_dict_sha256(fresh.model)


def test_student_style_build_with_another_class_count_keeps_all_but_the_head(
    offline_hub,
) -> None:
    model = create_model("timm:test_vit", num_classes=3, pretrained=True)
    expected = state_from_file(offline_hub.files[VIT])
    state = model.state_dict()
    assert state["head.weight"].shape == (3, expected["head.weight"].shape[1])
    for key, value in expected.items():
        if not key.startswith("head."):
            assert torch.equal(state[key], value), key


def test_preprocessing_is_the_pretrained_config(offline_hub) -> None:
    import timm
    import timm.data

    for tag in (VIT, CONV):
        loaded = load_teacher(TeacherConfig(name=f"timm:{tag}"))
        expected = timm.data.resolve_data_config(model=timm.create_model(tag))
        pre = loaded.preprocess
        assert (3, pre.input_size, pre.input_size) == expected["input_size"]
        assert pre.mean == pytest.approx(expected["mean"])
        assert pre.std == pytest.approx(expected["std"])
        assert pre.interpolation == expected["interpolation"]
        assert pre.crop_pct == pytest.approx(expected["crop_pct"])
        info = loaded.info
        assert (info.input_size, info.mean, info.std, info.interpolation) == (
            pre.input_size, pre.mean, pre.std, pre.interpolation,
        )  # fmt: skip
    # Explicit values still win.
    given = resolve_preprocess(
        "timm:test_vit", loaded.model, input_size=96, interpolation="bilinear", crop_pct=0.8
    )
    assert (given.input_size, given.interpolation, given.crop_pct) == (96, "bilinear", 0.8)


def test_kwargs_reach_every_kind_of_builder(offline_hub) -> None:
    vit = create_model("timm:test_vit", kwargs={"drop_path_rate": 0.05})
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.05)
    teacher = load_teacher(
        TeacherConfig(name="timm:test_vit", pretrained=False, kwargs={"drop_path_rate": 0.05})
    )
    assert teacher.info.name == f'timm:{VIT} {{"drop_path_rate": 0.05}}'
    factory = create_model("pld_pipeline.teacher.zoo:tiny_convnet", 4, kwargs={"width": 5})
    assert factory[0].out_channels == 5
    tv = create_model("resnet18", 4, kwargs={"zero_init_residual": True})
    assert torch.count_nonzero(tv.layer1[0].bn2.weight) == 0


@pytest.mark.parametrize(
    "name",
    ["timm:test_vit", f"timm:{CONV}", "pld_pipeline.teacher.zoo:tiny_convnet", "resnet18"],
)
def test_an_unknown_kwarg_is_a_config_error(offline_hub, name: str) -> None:
    with pytest.raises(ConfigError, match=r"does not take the kwargs \['drop_rat'\]"):
        create_model(name, 4, kwargs={"drop_rat": 0.1})
    if name.startswith("timm:"):  # found before the run, on the meta device
        with pytest.raises(ConfigError, match=r"does not take the kwargs \['drop_rat'\]"):
            check_model_available(name, kwargs={"drop_rat": 0.1})


def test_missing_weights_name_the_path_the_tag_and_the_command(offline_hub, tmp_path) -> None:
    from huggingface_hub import constants

    constants.HF_HUB_CACHE = str(tmp_path / "empty")  # restored by offline_hub's monkeypatch
    config = TeacherConfig(name="timm:test_vit")
    for call in (lambda: load_teacher(config), lambda: check_teacher_available(config)):
        with pytest.raises(WeightsNotFoundError) as info:
            call()
        message = str(info.value)
        assert str(tmp_path / "empty" / f"models--timm--{VIT}") in message
        assert f"`hf download timm/{VIT}`" in message
        assert f"`huggingface-cli download timm/{VIT}`" in message
        assert f"'{VIT}'" in message
    # A missing checkpoint names its path; random init needs no file.
    with pytest.raises(WeightsNotFoundError, match="nope.pt"):
        check_model_available("timm:test_vit", checkpoint=str(tmp_path / "nope.pt"))
    check_model_available("timm:test_vit", pretrained=False)


def test_without_the_extra_a_timm_name_is_one_clear_error(monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    for call in (
        lambda: create_model("timm:resnet50"),
        lambda: check_model_available("timm:resnet50"),
    ):
        with pytest.raises(MissingExtraError, match=r'pip install "pld-pipeline\[timm\]"'):
            call()


def test_unknown_names_and_tags(offline_hub) -> None:
    with pytest.raises(ModelNotFoundError, match="Unknown timm architecture 'test_vitt'.*test_vit"):
        check_model_available("timm:test_vitt")
    with pytest.raises(ModelNotFoundError, match="has no pretrained tag 'in22k'"):
        check_model_available("timm:test_vit.in22k")


def test_seeded_models_differ_so_the_sources_can_be_told_apart(offline_hub) -> None:
    hub = state_from_file(offline_hub.files[CONV])
    ckpt = torch.load(offline_hub.checkpoint, weights_only=True)
    assert not torch.equal(hub["fc.weight"], ckpt["fc.weight"])
    assert not torch.equal(random_timm(CONV, 2).fc.weight, random_timm(CONV, 3).fc.weight)

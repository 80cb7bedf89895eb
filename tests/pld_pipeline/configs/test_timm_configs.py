"""timm model fields in the configs: the example configs and the docs' YAML validate, the
rules of `pretrained` / `kwargs` / `checkpoint` are enforced when a config is read, and
reading one imports neither torch nor timm."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pld_pipeline.configs.cache import CacheConfig, TeacherConfig
from pld_pipeline.configs.loading import load_config
from pld_pipeline.configs.train import StudentConfig, TrainConfig

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
DOC = REPO / "docs" / "timm.md"


def test_the_example_configs_validate() -> None:
    cache = load_config(CacheConfig, str(EXAMPLES / "imagenet-timm-cache.yaml"), [])
    assert cache.teacher.name == "timm:convnext_base.fb_in22k_ft_in1k"
    assert cache.teacher.pretrained is None  # a teacher: the hub cache's weights
    train = load_config(TrainConfig, str(EXAMPLES / "imagenet-timm-train.yaml"), [])
    assert train.student.name == "timm:resnet50"
    assert train.student.kwargs == {"drop_path_rate": 0.05}
    assert (train.student.eval_crop_pct, train.student.interpolation) == ("model", "model")
    assert train.cache == cache.output


def test_the_page_shows_the_example_files() -> None:
    """The page's YAML blocks are the example files, included (tests/docs checks every page
    that way); the torchvision teacher snippet validates as a TeacherConfig."""
    included = re.findall(r'```yaml\n--8<-- "([^"]+)"\n```', DOC.read_text())
    assert included == [
        "examples/imagenet-1k/teacher-r152.yaml",
        "examples/imagenet-timm-cache.yaml",
        "examples/imagenet-timm-train.yaml",
    ]
    snippet = yaml.safe_load((REPO / included[0]).read_text())
    TeacherConfig.model_validate(snippet["teacher"])


@pytest.mark.parametrize(
    ("model", "data", "fragment"),
    [
        (TeacherConfig, {"name": "resnet50", "pretrained": True}, "pretrained applies to timm"),
        (StudentConfig, {"name": "m:f", "pretrained": False}, "pretrained applies to timm"),
        (StudentConfig, {"name": "timm:resnet50", "kwargs": {"num_classes": 10}},
         "kwargs.num_classes is set by this project; use num_classes"),
        (TeacherConfig, {"name": "timm:resnet50", "kwargs": {"pretrained": True}},
         "use pretrained instead"),
        (TeacherConfig, {"name": "timm:resnet50", "pretrained": True, "checkpoint": "a.pt"},
         "not both"),
        (TeacherConfig, {"name": "timm:resnet50", "weights": "IMAGENET1K_V2"}, "a timm name"),
        (StudentConfig, {"name": "timm: "}, "names no timm model"),
        (StudentConfig, {"eval_crop_pct": "timm"}, "eval_crop_pct"),
        (StudentConfig, {"interpolation": "lanczos"}, "interpolation"),
    ],
)  # fmt: skip
def test_model_field_rules(model, data, fragment) -> None:
    with pytest.raises(ValidationError, match=re.escape(fragment)):
        model.model_validate(data)


def test_reading_a_timm_config_imports_neither_torch_nor_timm() -> None:
    code = (
        "import sys\n"
        "from pld_pipeline.configs.loading import load_config\n"
        "from pld_pipeline.configs.train import TrainConfig\n"
        f"load_config(TrainConfig, {str(EXAMPLES / 'imagenet-timm-train.yaml')!r}, [])\n"
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"

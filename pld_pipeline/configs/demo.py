"""The demo's configuration: Fashion-MNIST sizes, teacher and student recipes, where to write."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import Field

from pld_pipeline.configs.base import StrictModel
from pld_pipeline.configs.train import LossName

DEMO_LOSSES: tuple[str, ...] = get_args(LossName)  # every loss, in the library's order


class DemoConfig(StrictModel):
    """The whole pipeline on Fashion-MNIST (on CPU by default): data -> teacher -> cache -> sweep."""

    workdir: str = Field("workdir", description="everything is written under this folder")
    source: str = Field(
        "/usr/share/datasets/fashion-mnist",
        description="folder with the Fashion-MNIST gzip IDX files (Debian dataset-fashion-mnist)",
    )
    train_per_class: int | None = Field(
        1000, gt=0, description="training images per class (None = all 6000)"
    )
    val_per_class: int | None = Field(
        300, gt=0, description="validation images per class (None = all 1000)"
    )
    image_size: int = Field(28, gt=7, description="input side for teacher and students")
    teacher_model: str = Field(
        "pld_pipeline.demo.small_models:demo_teacher",
        description="teacher factory (module:callable taking num_classes)",
    )
    teacher_epochs: int = Field(15, gt=0, description="teacher training epochs")
    student_model: str = Field(
        "pld_pipeline.demo.small_models:demo_student",
        description="student factory (module:callable taking num_classes)",
    )
    student_epochs: int = Field(20, gt=0, description="epochs of every student run")
    num_views: int = Field(10, gt=0, description="cached teacher views per image (replay mode)")
    min_label_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="the teacher pass's least teacher top-1 against the labels (None = 5x "
        "chance: 0.5 for 10 classes; --quick sets 0.15 for its 2-epoch teacher)",
    )
    k: int = Field(5, gt=0, le=10, description="teacher classes cached per view")
    temperatures: tuple[float, ...] = Field(
        (1.0, 2.0, 4.0), description="temperatures whose logsumexp is cached"
    )
    losses: tuple[LossName, ...] = Field(DEMO_LOSSES, description="student losses to compare")
    batch_size: int = Field(128, gt=0, description="batch size for teacher and students")
    lr: float = Field(0.05, gt=0, description="peak SGD learning rate (cosine, 1 warmup epoch)")
    seed: int = Field(0, description="seed of data subset, views and runs")
    max_parallel: int = Field(1, gt=0, description="student runs at once")
    num_workers: int = Field(0, ge=0, description="DataLoader workers (0 = decode in-process)")
    device: str = Field(
        "cpu", description="device of teacher, cache pass and students: 'cpu', 'cuda', 'auto'"
    )
    views_per_image: int = Field(
        1, gt=0, description="cached views each student trains per decoded image (<= num_views)"
    )

    @classmethod
    def quick_defaults(cls) -> dict[str, Any]:
        """The `--quick` sizes: a few minutes on 2 CPU cores (what the tests run).

        Small, but every model must end well above chance (the tests assert it): batches of
        32 give the teacher 95 steps and each student 152, where 2 epochs at batch 128 left
        them all at chance (10-16 % top-1 on 10 classes).
        """
        return {
            "train_per_class": 60,
            "val_per_class": 30,
            "batch_size": 32,
            "teacher_epochs": 5,
            "student_epochs": 8,
            "num_views": 2,
            # A 2-epoch teacher is right on about a quarter of its views (labels in its own
            # order); 1.5x chance still catches a class list out of order.
            "min_label_agreement": 0.15,
        }

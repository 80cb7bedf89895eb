"""Checks before the demo starts: its Fashion-MNIST files and models, found before Prefect starts."""

from __future__ import annotations

from pathlib import Path

from pld_pipeline.configs.demo import DemoConfig


def check_demo(config: DemoConfig) -> None:
    """Check the demo's inputs: Fashion-MNIST files (unless already written out) and models.

    Raises:
        ConfigError: the Fashion-MNIST files are missing, or the workdir holds data written
            with other settings.
        ModelNotFoundError: the teacher or student factory cannot be imported.
    """
    from pld_pipeline.demo import fashion_mnist  # noqa: PLC0415
    from pld_pipeline.teacher.models import check_model_available  # noqa: PLC0415

    data = Path(config.workdir) / "data" / "fashion-mnist"
    source = Path(config.source)
    fashion_mnist.check_image_folder(data, "train", config.train_per_class, config.seed, source)
    fashion_mnist.check_image_folder(data, "val", config.val_per_class, config.seed, source)
    check_model_available(config.teacher_model)
    check_model_available(config.student_model)

"""Old home of `pld_pipeline.demo.small_models`, kept because factory names are stored by this path.

The demo's configs and caches name their models `pld_pipeline.small_models:demo_teacher`
(and `:demo_student`, `:tiny_cnn`, ...); this module keeps those names loading. New code
imports `pld_pipeline.demo.small_models`.
"""

from pld_pipeline.demo.small_models import (
    BasicBlock,
    demo_student,
    demo_teacher,
    seeded_tiny_cnn,
    small_resnet,
    tiny_cnn,
)

__all__ = [
    "BasicBlock",
    "demo_student",
    "demo_teacher",
    "seeded_tiny_cnn",
    "small_resnet",
    "tiny_cnn",
]

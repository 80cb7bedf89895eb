"""Old home of `pld_pipeline.teacher.zoo`, kept because factory names are stored by this path.

Cache manifests and users' configs name teachers as `pld_pipeline.zoo:efficientnet_lite0`;
this module keeps those names loading. New code imports `pld_pipeline.teacher.zoo`.
"""

from pld_pipeline.teacher.zoo import EFFICIENTNET_LITE_CFG, efficientnet_lite0, tiny_convnet

__all__ = ["EFFICIENTNET_LITE_CFG", "efficientnet_lite0", "tiny_convnet"]

"""The cache a fixed config writes is pinned by a hash: a refactor that changes any stored
number, key, view or layout fails here (the "no behaviour change" guard of the wings move).

The config's teacher (exact_teacher_testlib) makes every stored float exact, so the hash
holds on any x86 CPU. What is hashed is read back with plain zarr: each array's name,
shape, dtype, chunk and shard shape and decoded bytes, and the group's attributes without
the provenance fields that differ per run by design (library versions, creation time,
producer, the absolute weights path). Compressed bytes are left out on purpose: they
belong to the installed zstd/blosc, not to this code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from exact_teacher_testlib import MEAN, STD, build_colour_folder

from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.teacher.cache_build import build_shard, prepare_cache
from pld_pipeline.teacher.cache_report import finalize_cache

PROVENANCE = ("library_versions", "created_at", "producer")
# Recorded 2026-12-04 with schema version 2 (record precision, issue 21). Schema 3 changed
# the q8 layout only: an fp16 or full cache differs in its version number (group and
# manifest) alone; put back as version 2, it must hash to these again.
EXPECTED_SCHEMA_2 = {
    "topk": "bd9482a65b653037825679416ef494c7e14f91559d4274e1520d30ce19c94565",
    "full": "7ed21d9678db798b8e5d68e9c0b4b06e6f1f118acbf42bfbf9d30569f9cd27a0",
}
# Recorded 2026-11-30 from the code before the wings move (commit b32ce6a), schema
# version 1. Schema 2 changed two attributes of an fp16 cache and nothing else: the
# version (group and manifest) and the manifest's new record_precision; put back as
# version 1 wrote them, the cache must hash to these again.
EXPECTED_SCHEMA_1 = {
    "topk": "6eba437eb67c3f2d3db1536e0036a8d93bb58d4d26026a50d6ac02662ea252c3",
    "full": "f4b21f9b0b9d1212929c0597e402b595d27af0681514b6cf37196c5b78a1102a",
}


def _config(root: Path, out: Path, fmt: str) -> CacheConfig:
    return CacheConfig.model_validate({
        "dataset_root": str(root), "output": str(out), "format": fmt, "k": 3,
        "temperatures": [1.0, 4.0], "shard_size": 8, "batch_size": 4, "num_workers": 0,
        "device": "cpu", "amp": "off", "classes": "sorted-folders",
        "replay_check_samples": 0,
        "teacher": {"name": "exact_teacher_testlib:colour_teacher", "num_classes": 4,
                    "input_size": 16, "mean": list(MEAN), "std": list(STD),
                    "interpolation": "bilinear", "crop_pct": 1.0},
        "views": {"mode": "replay", "num_views": 3, "seed": 7, "scale": [0.3, 1.0]},
    })  # fmt: skip


def _write_cache(config: CacheConfig) -> None:
    """The flow's steps, in its order, in this process."""
    plan = prepare_cache(config)
    for shard in range(plan.num_shards):
        build_shard(config, shard)
    finalize_cache(config)


def content_hash(path: Path) -> str:
    group = zarr.open_group(str(path), mode="r")
    attrs = json.loads(json.dumps(dict(group.attrs)))
    manifest = attrs["pld_cache"]
    for field in PROVENANCE:
        manifest.pop(field)
    manifest["teacher"].pop("weights_source")
    digest = hashlib.sha256(json.dumps(attrs, sort_keys=True).encode())
    for name in sorted(group.array_keys()):
        array = group[name]
        layout = [name, list(array.shape), str(array.dtype), list(array.chunks)]
        layout.append(None if array.shards is None else list(array.shards))
        digest.update(json.dumps(layout).encode())
        values = array[...]
        if values.dtype.kind in "OTU":  # variable-width strings: their bytes hold pointers
            digest.update(json.dumps([str(v) for v in values.ravel()]).encode())
        else:
            digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("fmt", ["topk", "full"])
def test_a_fixed_config_writes_the_recorded_cache(fmt, tmp_path):
    root = build_colour_folder(tmp_path / "images")
    out = tmp_path / f"{fmt}.zarr"
    _write_cache(_config(root, out, fmt))

    group = zarr.open_group(str(out), mode="r")
    labels = group["label"][...]
    # The numbers are the ones the teacher was built to give (independent of the hash).
    if fmt == "topk":
        idx, logp = group["topk_idx"][...], group["topk_logp"][...]
        assert (idx[:, :, 0] == labels).all()
        assert (logp[:, :, 0] == 0).all()
        assert set(np.unique(logp[:, :, 1:])) <= {-1000.0 - j for j in range(4)}
    else:
        logits = group["logits"][...] if "logits" in group else None
        assert logits is None or (logits.argmax(-1) == labels).all()
    group = zarr.open_group(str(out), mode="r+")
    assert group.attrs["schema_version"] == group.attrs["pld_cache"]["schema_version"] == 3
    group.attrs["pld_cache"] = {**group.attrs["pld_cache"], "schema_version": 2}
    group.attrs["schema_version"] = 2
    assert content_hash(out) == EXPECTED_SCHEMA_2[fmt]

    manifest = dict(group.attrs["pld_cache"])
    assert manifest.pop("record_precision") == "fp16"  # the default precision
    group.attrs["pld_cache"] = {**manifest, "schema_version": 1}
    group.attrs["schema_version"] = 1
    assert content_hash(out) == EXPECTED_SCHEMA_1[fmt]

"""storage/README.md: the plain-zarr example runs, and the array table matches the schema."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from storage_testlib import as_schema_version_1, write_cache

import storage
from storage.schema import array_specs
from storage.synthetic import make_labels, make_manifest, make_records

README = Path(storage.__file__).with_name("README.md")


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _run_example(path) -> tuple[str, dict]:
    (block,) = _python_blocks(README.read_text())
    assert '"path/to/cache.zarr"' in block
    code = block.replace('"path/to/cache.zarr"', repr(str(path)))
    assert "import storage" not in code
    assert "from storage" not in code
    out = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), scope)
    return out.getvalue(), scope


@pytest.mark.parametrize("precision", ["fp16", "q8", "q8-t1-only", "q8-schema-2", "fp16-schema-1"])
def test_plain_zarr_example_runs_on_a_real_cache(tmp_path, precision):
    m = make_manifest(
        num_samples=300,
        num_classes=50,
        k=8,
        num_views=2,
        shard_size=64,
        temperatures=(1.0,) if precision.endswith("t1-only") else (1.0, 2.0, 4.0),
        record_precision="q8" if precision.startswith("q8") else "fp16",
        schema_version=2 if precision == "q8-schema-2" else storage.SCHEMA_VERSION,
    )
    labels = make_labels(300, 50)
    write_cache(tmp_path / "c.zarr", m, labels)
    if precision == "fp16-schema-1":
        as_schema_version_1(tmp_path / "c.zarr")
    out, scope = _run_example(tmp_path / "c.zarr")
    # The example's figures agree with an independent computation from the records given
    # to the writer (float64; q8 within its quantization error of them).
    records = [make_records(m, 0, a, min(a + 64, 300), labels) for a in range(0, 300, 64)]
    idx = np.concatenate([r["topk_idx"] for r in records])
    logp = np.concatenate([r["topk_logp"] for r in records]).astype(np.float64)
    top1 = float(np.mean(idx[:, 0] == labels))
    assert f"teacher top-1 {top1:.3f}" in out
    tail = 1 - np.exp(logp).sum(axis=1)
    assert np.abs(scope["tail"] - tail).max() < (2e-2 if precision.startswith("q8") else 2e-3)
    assert np.array_equal(scope["crop"], np.concatenate([r["crop"] for r in records]))
    assert scope["lazy"].shape == (2, 300, 8)
    assert precision.split("-")[0] in out


def test_array_table_lists_every_array_with_its_dtype():
    text = README.read_text()
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", text, flags=re.M)
    }
    topk = array_specs(make_manifest())
    full = array_specs(make_manifest(fmt="full", k=0))
    q8 = array_specs(make_manifest(record_precision="q8"))
    q8_v2 = array_specs(make_manifest(record_precision="q8", schema_version=2))
    # The two q8 layouts differ by the step array alone, and version 3 stores no lse_gap
    # when T = 1 is the only temperature (version 2 always does).
    assert set(q8_v2) ^ set(q8) == {"topk_log2_step"}
    t1_only = make_manifest(record_precision="q8", temperatures=(1.0,))
    t1_only_v2 = make_manifest(record_precision="q8", temperatures=(1.0,), schema_version=2)
    assert set(array_specs(t1_only_v2)) ^ set(array_specs(t1_only)) == {
        "topk_log2_step",
        "lse_gap",
    }
    assert "`topk_log2_step` [V, N] int8 (s = 2 ** e" in text  # the version-2 layout, in prose
    for name, spec in {**topk, **full, **q8}.items():
        assert name in rows, f"{name} is not documented in storage/README.md"
        documented = rows[name]
        dtype = "string" if spec.dtype is str else np.dtype(spec.dtype).name
        assert dtype in documented, f"{name}: README says {documented!r}, schema has {dtype}"


def test_readme_states_the_schema_version():
    assert f"schema version {storage.SCHEMA_VERSION}" in README.read_text()

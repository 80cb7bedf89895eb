"""storage/README.md: the plain-zarr example runs, and the array table matches the schema."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
from storage_testlib import write_cache

import storage
from storage.schema import array_specs
from storage.synthetic import make_labels, make_manifest

README = Path(storage.__file__).with_name("README.md")


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_plain_zarr_example_runs_on_a_real_cache(tmp_path):
    m = make_manifest(
        num_samples=300,
        num_classes=50,
        k=8,
        num_views=2,
        shard_size=64,
        temperatures=(1.0, 2.0, 4.0),
    )
    labels = make_labels(300, 50)
    write_cache(tmp_path / "c.zarr", m, labels)
    (block,) = _python_blocks(README.read_text())
    assert '"path/to/cache.zarr"' in block
    code = block.replace('"path/to/cache.zarr"', repr(str(tmp_path / "c.zarr")))
    assert "import storage" not in code
    assert "from storage" not in code
    out = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), scope)
    # The example's figures agree with an independent computation from the records.
    slab = storage.open_cache(tmp_path / "c.zarr").load_view(0)
    top1 = float(np.mean(slab.topk_idx[:, 0] == labels))
    assert f"teacher top-1 {top1:.3f}" in out.getvalue()
    assert scope["lazy"].shape == (2, 300, 8)


def test_array_table_lists_every_array_with_its_dtype():
    text = README.read_text()
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", text, flags=re.M)
    }
    topk = array_specs(make_manifest())
    full = array_specs(make_manifest(fmt="full", k=0))
    for name, spec in {**topk, **full}.items():
        assert name in rows, f"{name} is not documented in storage/README.md"
        documented = rows[name]
        dtype = "string" if spec.dtype is str else np.dtype(spec.dtype).name
        assert dtype in documented, f"{name}: README says {documented!r}, schema has {dtype}"


def test_readme_states_the_schema_version():
    assert f"schema version {storage.SCHEMA_VERSION}" in README.read_text()

"""docs/choosing-k-t-precision.md and the gradient-band table student runs read are what
bench/fidelity.py renders from the committed measurement (bench/measured/fidelity-*)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "choosing-k-t-precision.md"
BANDS = REPO / "pld_pipeline" / "student" / "data" / "gradient_bands.json"
(MEASURED,) = sorted((REPO / "bench" / "measured").glob("fidelity-*/fidelity.json"))


def _fidelity():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import fidelity
    finally:
        sys.path.remove(str(REPO / "bench"))
    return fidelity


def test_the_docs_tables_are_the_measured_ones():
    result = json.loads(MEASURED.read_text())
    text = DOC.read_text()
    start = text.index("<!-- fidelity-tables:start -->\n") + len("<!-- fidelity-tables:start -->\n")
    end = text.index("<!-- fidelity-tables:end -->")
    assert text[start:end] == _fidelity().markdown_tables(result), (
        "docs/choosing-k-t-precision.md is stale: paste `bench/fidelity.py --markdown` output"
    )
    assert result["info"]["command"].split()[1] == "bench/fidelity.py"
    assert result["info"]["date"] in text


def test_the_shipped_bands_are_the_measured_ones(tmp_path):
    result = json.loads(MEASURED.read_text())
    _fidelity().write_bands(tmp_path / "bands.json", result)
    assert json.loads(BANDS.read_text()) == json.loads((tmp_path / "bands.json").read_text())
    bands = json.loads(BANDS.read_text())
    assert set(bands["errors"]) == {"ce", "kd", "dist", "dkd", "pld"}
    assert bands["source"]["classes"] == 1000

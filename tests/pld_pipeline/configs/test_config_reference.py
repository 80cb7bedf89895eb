"""The README's configuration reference is the one the config models generate."""

from __future__ import annotations

from pathlib import Path

from pld_pipeline.configs.reference import markdown_reference

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_reference_is_current():
    text = README.read_text()
    start = text.index("<!-- config-reference:start -->\n") + len(
        "<!-- config-reference:start -->\n"
    )
    end = text.index("<!-- config-reference:end -->")
    assert text[start:end] == markdown_reference(), (
        "README's configuration reference is stale: regenerate it with "
        "`python -m pld_pipeline.configs.reference --update README.md`"
    )


def test_every_field_is_described():
    reference = markdown_reference()
    for line in reference.splitlines():
        if line.startswith("| `"):
            assert not line.rstrip().endswith("|  |"), f"field without description: {line}"

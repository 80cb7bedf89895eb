"""The docs' configuration reference (docs/configuration.md) is the one the config models generate."""

from __future__ import annotations

from pathlib import Path

from pld_pipeline.configs.reference import markdown_reference

PAGE = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"


def test_docs_reference_is_current():
    text = PAGE.read_text()
    start = text.index(START) + len(START)
    end = text.index(END)
    assert text[start:end] == markdown_reference(), (
        "docs/configuration.md is stale: regenerate it with "
        "`python -m pld_pipeline.configs.reference --update docs/configuration.md`"
    )


def test_every_field_is_described():
    reference = markdown_reference()
    for line in reference.splitlines():
        if line.startswith("| `"):
            assert not line.rstrip().endswith("|  |"), f"field without description: {line}"


def test_no_raw_html_in_descriptions():
    """`<class>` outside a code span is an HTML tag to Markdown: the docs would drop it."""
    import re

    for line in markdown_reference().splitlines():
        outside_code = re.sub(r"`[^`]*`", "", line)
        assert not re.search(r"<[A-Za-z/]", outside_code), f"put the <...> in backticks: {line}"

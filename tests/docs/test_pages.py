"""The README and the docs pages, read as files: the README is a short front page, every
config or script a page shows comes from examples/ (where test_examples.py checks it), every
page is in the nav, and the troubleshooting page has a section for every error class."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for command in ("make demo", "make test", "pld cache", "pld train"):
        assert command in text
    assert "| teacher (small ResNet) | ce | 88.73 | 217 |" in text  # the demo's results table


def test_readme_links_resolve():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert targets, "the README links into the docs"
    for target in targets:
        assert (ROOT / target).is_file(), f"README links to {target}, which does not exist"
    for page in ("getting-started", "concepts", "imagenet", "troubleshooting", "api/storage"):
        assert f"docs/{page}.md" in targets


def test_readme_configs_are_the_examples():
    """The README cannot include files: its YAML and Python blocks must equal a file under
    examples/, so the tests that load those files check what the README shows."""
    shipped = {p.read_text() for p in (ROOT / "examples").rglob("*") if p.is_file()}
    blocks = [
        body for lang, body in FENCE.findall(README.read_text()) if lang in ("yaml", "python")
    ]
    assert len(blocks) >= 2  # the ImageNet cache and train configs
    for body in blocks:
        assert body in shipped, f"README block is not a file under examples/:\n{body[:200]}"


def test_docs_configs_and_snippets_come_from_examples():
    """Every YAML or Python block on a page is one include of a file under examples/."""
    for page in [*pages(), ROOT / "CONTRIBUTING.md"]:
        for lang, body in FENCE.findall(page.read_text()):
            if lang not in ("yaml", "yml", "python", "py"):
                continue
            match = SNIPPET.match(body.strip())
            where = f"{page.relative_to(ROOT)}: a {lang} block not included from examples/"
            assert match, f"{where}: {body[:120]!r}"
            assert match.group(1).startswith("examples/"), where
            assert (ROOT / match.group(1)).is_file()


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def entries(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                yield from entries(value)
            else:
                yield value

    listed = set(entries(config["nav"]))
    on_disk = {p.relative_to(DOCS).as_posix() for p in pages()}
    assert on_disk <= listed, f"pages missing from mkdocs.yml's nav: {sorted(on_disk - listed)}"
    assert listed <= on_disk, f"nav entries without a page: {sorted(listed - on_disk)}"


def test_api_pages_name_the_public_api():
    api = {p.stem: p.read_text() for p in (DOCS / "api").glob("*.md")}
    assert "::: storage.open_cache" in api["storage"]
    assert "::: storage.create" in api["storage"]
    assert "::: pld_pipeline.losses.make_loss" in api["losses"]
    assert "::: pld_pipeline.student.run.build.build_run" in api["student"]
    assert "::: pld_pipeline.student.run.train.fit" in api["student"]
    for module in ("cache", "train", "demo"):
        assert f"::: pld_pipeline.configs.{module}" in api["configs"]


def error_classes() -> set[str]:
    """Every error class the packages define on purpose: subclasses (at any depth, by name)
    of PLDError and storage's CacheError, found in the source without importing it."""
    bases: dict[str, set[str]] = {}
    for package in ("pld_pipeline", "storage", "flows"):
        for file in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    names = {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases}
                    bases.setdefault(node.name, set()).update(names)
    found = {"PLDError", "CacheError"}
    while True:
        more = {name for name, parents in bases.items() if parents & found} - found
        if not more:
            return found
        found |= more


def test_troubleshooting_has_a_section_for_every_error():
    headings = {
        line.lstrip("#").strip()
        for line in (DOCS / "troubleshooting.md").read_text().splitlines()
        if line.startswith("#")
    }
    errors = error_classes()
    assert {"ConfigError", "CorruptChunkError", "TemperatureNotCachedError"} <= errors
    missing = sorted(e for e in errors if not any(re.search(rf"\b{e}\b", h) for h in headings))
    assert not missing, f"docs/troubleshooting.md has no section for {missing}"

"""The docs site as `make docs` builds it and a reader sees it.

The site builds with `mkdocs build --strict` and needs nothing from the network; a broken
link, a page missing from the nav and an API reference to a name the code no longer has
each fail the build; and in headless Chromium the getting-started page shows the
navigation and an API page shows the docstrings. Set PLD_SCREENSHOT_DIR to keep the
screenshots (docs/img/site-*.png are these).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser_testlib import chromium

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration  # runs mkdocs and Chromium as subprocesses
NAV = ("Getting started", "Concepts", "ImageNet", "Sweeps and reports", "Operations",
       "Scaling out", "Cache format", "Configuration", "Benchmarks", "Troubleshooting",
       "Contributing")  # fmt: skip


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of `config` into `site`, from the checkout (as `make docs`)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    build = mkdocs_build(ROOT / "mkdocs.yml", out)
    assert build.returncode == 0, build.stdout + build.stderr
    assert "WARNING" not in build.stderr
    return out


def test_every_page_is_built(site):
    for page in ("index", "getting-started", "concepts", "imagenet", "sweeps", "operations",
                 "scaling-out", "format", "configuration", "benchmarks", "troubleshooting",
                 "contributing", "api/storage", "api/losses", "api/student", "api/configs"):  # fmt: skip
        assert (site / f"{page}.html").is_file(), page
    # The included files arrive whole: the format doc and an example config.
    assert "Reading a cache with plain zarr" in (site / "format.html").read_text()
    assert "ResNet152_Weights.IMAGENET1K_V2" in (site / "imagenet.html").read_text()


def test_site_fetches_nothing_from_the_network(site):
    for page in site.rglob("*.html"):
        text = page.read_text()
        remote = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"', text)
        assert not remote, f"{page.relative_to(site)} loads {remote}"
        assert "fonts.googleapis" not in text


def test_api_pages_come_from_the_docstrings(site):
    import storage
    from pld_pipeline.losses import make_loss
    from pld_pipeline.student.run.build import build_run
    from pld_pipeline.student.run.train import fit

    def first_line(obj) -> str:
        return obj.__doc__.strip().splitlines()[0].replace("`", "")

    def plain(page: Path) -> str:
        return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))

    text = {p.stem: plain(p) for p in (site / "api").glob("*.html")}
    assert first_line(make_loss) in text["losses"]
    assert first_line(storage.open_cache) in text["storage"]
    assert first_line(fit) in text["student"]
    assert first_line(build_run) in text["student"]
    assert "CacheConfig" in text["configs"]
    assert "TrainConfig" in text["configs"]


@pytest.mark.parametrize(
    ("broken", "page"),
    [
        ("link", "See [the missing page](no-such-page.md).\n"),
        ("anchor", "See [concepts](concepts.md#no-such-section).\n"),
        ("api", "::: pld_pipeline.losses.no_such_loss\n"),
    ],
)
def test_strict_build_fails_on_a_broken_reference(tmp_path, broken, page):
    """The site's own config, with one page that links nowhere or documents a lost name."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "index.md").write_text(f"# Home\n\n{page}")
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: {docs}\n")
    build = mkdocs_build(config, tmp_path / "site")
    assert build.returncode != 0, f"a broken {broken} did not fail the build"


def test_strict_build_fails_on_a_page_missing_from_the_nav(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "orphan.md").write_text("# A page nobody can find\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: {docs}\n")
    build = mkdocs_build(config, tmp_path / "site")
    assert build.returncode != 0
    assert "orphan.md" in build.stdout + build.stderr


def nav_links(dom: str) -> set[str]:
    """The labels of the navigation's links in a rendered Material page."""
    links = re.findall(r'<a [^>]*class="md-nav__link[^"]*"[^>]*>(.*?)</a>', dom, re.S)
    return {" ".join(re.sub(r"<[^>]+>", " ", link).split()) for link in links}


def test_pages_render_in_a_browser(site, tmp_path):
    """Getting started and the losses API page, as Chromium renders them from the files."""
    shots = {}
    for name, page in (("getting-started", "getting-started.html"), ("api", "api/losses.html")):
        shots[name] = tmp_path / f"site-{name}.png"
        dom = chromium((site / page).as_uri(), tmp_path / f"chrome-{name}", shots[name])
        links = nav_links(dom)
        for label in NAV:
            assert label in links, f"{label!r} is not a link of the rendered navigation"
        if name == "getting-started":
            assert "Set up: two commands" in dom
            assert "make demo" in dom
            assert "88.73" in dom  # the demo's results table
        else:
            assert "pld_pipeline.losses.make_loss" in dom
            assert "Build a loss by name with its parameters bound." in dom  # its docstring
            assert "CachedTargets" in dom
        assert shots[name].stat().st_size > 20_000, "an empty or blank screenshot"
    keep = os.environ.get("PLD_SCREENSHOT_DIR")
    if keep:
        for shot in shots.values():
            shutil.copy(shot, Path(keep) / shot.name)

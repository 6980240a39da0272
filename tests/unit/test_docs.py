"""The README leads with the two commands and stays short; the documentation site builds with
every link and anchor resolved, and a broken one fails the build."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "scripts" / "docs_site.py"


def mkdocs_build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=root, capture_output=True, text=True, timeout=300,
                          check=False)


def nav_pages(config: Path) -> list[str]:
    def walk(items):
        for item in items:
            for value in item.values():
                yield from walk(value) if isinstance(value, list) else [value]
    return list(walk(yaml.safe_load(config.read_text())["nav"]))


def test_the_readme_starts_with_the_two_commands_and_fits_on_a_few_screens():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, re.DOTALL).group(1)
    assert [line.split()[:2] for line in first_block.strip().split("\n")] == [
        ["make", "serve"], ["make", "test"]]
    assert text.index("```sh") < text.index("\n## ")
    assert len(text.split("\n")) <= 150


def test_every_page_under_docs_is_in_the_site_s_navigation():
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages and pages <= set(nav_pages(ROOT / "mkdocs.yml"))
    assert all((ROOT / page).is_file() for page in nav_pages(ROOT / "mkdocs.yml"))


def test_the_documentation_builds_with_every_link_resolved(tmp_path):
    built = mkdocs_build(ROOT, tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "site" / "docs" / "api.html").is_file()
    assert (tmp_path / "site" / "perf" / "reports" / "sts-test.html").is_file()


def test_a_broken_link_or_anchor_fails_the_build(tmp_path):
    """The same hook and strict settings on a repository of three pages."""
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "perf" / "reports").mkdir(parents=True)
    (repo / "mkdocs.yml").write_text(
        f"site_name: t\ndocs_dir: docs\nstrict: true\nhooks:\n  - {HOOK}\n"
        "validation:\n  anchors: warn\n  unrecognized_links: warn\n  not_found: warn\n")
    (repo / "perf" / "reports" / "r.md").write_text("# Report\n\n## Figures\n\n1.0\n")
    (repo / "docs" / "page.md").write_text("# Page\n\nSee [the report](../perf/reports/r.md).\n")
    (repo / "README.md").write_text("# Top\n\n[page](docs/page.md)\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    good = mkdocs_build(repo, tmp_path / "site")
    assert good.returncode == 0, good.stdout + good.stderr

    (repo / "docs" / "page.md").write_text("# Page\n\nSee [the report](../perf/reports/gone.md).\n")
    broken = mkdocs_build(repo, tmp_path / "site")
    assert broken.returncode != 0 and "perf/reports/gone.md" in broken.stderr

    (repo / "docs" / "page.md").write_text(
        "# Page\n\nSee [the figures](../perf/reports/r.md#no-such-part).\n")
    anchor = mkdocs_build(repo, tmp_path / "site")
    assert anchor.returncode != 0 and "no-such-part" in anchor.stderr
    (repo / "docs" / "page.md").write_text(
        "# Page\n\nSee [the figures](../perf/reports/r.md#figures).\n")
    assert mkdocs_build(repo, tmp_path / "site").returncode == 0

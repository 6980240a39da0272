"""Reports say what they measured, and the README and the docs pages never quote a stale one
unmarked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from perf import provenance
from perf.provenance import NOT_RECORDED, Provenance

ROOT = Path(__file__).resolve().parents[2]
REPORT_NAME = re.compile(r"perf/reports/([\w.-]+/?)")
MADE = Provenance("1a2b3c4", "pretrained", "trained-20261206-64abceda", "a" * 64)


def documentation() -> str:
    """The README and every page under docs/."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return "\n\n".join(page.read_text() for page in pages)


def readme_passages(text: str | None = None) -> list[str]:
    """The paragraphs of the README and the docs pages, each table row and list item on its
    own: a figure and the report it comes from stand in one passage."""
    text = documentation() if text is None else text
    passages: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(line.lstrip().startswith(("|", "- ", "* ")) for line in lines):
            current: list[str] = []
            for line in lines:
                if line.lstrip().startswith(("|", "- ", "* ")) and current:
                    passages.append("\n".join(current))
                    current = []
                current.append(line)
            passages.append("\n".join(current))
        else:
            passages.append(block)
    return [p for p in passages if p.strip()]


def quoted_reports(passage: str) -> list[Path]:
    out = []
    for name in sorted(set(REPORT_NAME.findall(passage))):
        path = provenance.REPORTS / name
        if path.is_dir():
            out.append(path / "README.md")
        elif path.suffix == ".md":
            out.append(path)  # a plot or a JSON file beside a report is not one
    return out


def unmarked_stale(served: Provenance, text: str | None = None) -> list[tuple[str, str]]:
    """(report, passage) for each README or docs passage that quotes a report measured on
    another FuseMoE than ``served`` (or one that does not say) and does not say "stale"."""
    out = []
    for passage in readme_passages(text):
        for report in quoted_reports(passage):
            assert report.is_file(), f"the documentation names {report}, which does not exist"
            if not provenance.current(provenance.parse(report), served) and (
                    "stale" not in passage.lower()):
                out.append((report.name, passage[:100]))
    return out


def test_a_report_is_current_with_the_served_digest_or_the_full_profile_s_seeded_init():
    served = Provenance("c", "pretrained", "trained-20261206-64abceda", "s")
    same = Provenance("x", "pretrained", "trained-20270101-64abceda", "t")
    assert provenance.current(same, served)
    assert not provenance.current(Provenance("x", "pretrained", "trained-20261206-0badf00d",
                                             "t"), served)
    assert not provenance.current(Provenance("x", NOT_RECORDED, same.checkpoint, "t"), served)
    assert not provenance.current(Provenance("x", "pretrained", NOT_RECORDED, "t"), served)
    assert provenance.current(Provenance("x", "full", "seeded-init-1", "t"), served)
    assert not provenance.current(Provenance("x", "full", same.checkpoint, "t"), served)
    assert not provenance.current(None, served)


def test_the_provenance_line_is_written_under_the_title_and_read_back():
    text = provenance.stamped("# A report\n\nSome figures.\n", MADE)
    assert text == f"# A report\n\n{MADE.line()}\n\nSome figures.\n"
    again = provenance.stamped(text, Provenance("9f9f9f9", "full", "seeded-init-1", "b" * 64))
    assert again.count("Measured on:") == 1 and "9f9f9f9" in again and "1a2b3c4" not in again


def test_a_report_round_trips_its_provenance(tmp_path):
    report = tmp_path / "r.md"
    report.write_text(provenance.stamped("# Title\nno blank line after the title\n", MADE))
    assert provenance.parse(report) == MADE
    report.write_text("# Title\n\nMeasured on: commit `x`, profile `y`.\n")  # incomplete
    assert provenance.parse(report) is None


@pytest.mark.parametrize(("checkpoint", "identity"), [
    ("trained-20261206-64abceda", "64abceda"),
    ("trained-20270101-64abceda", "64abceda"),  # trained again another day: same settings
    ("seeded-init-1", "seeded-init-1"),
    (NOT_RECORDED, None),
    ("trained-2026-64abceda", None),
])
def test_a_checkpoint_is_known_by_its_digest_not_its_day(checkpoint, identity):
    assert Provenance("c", "pretrained", checkpoint, "s").identity == identity


def test_a_run_records_the_served_checkpoint_and_the_profile(tmp_path):
    from export.registry import EMBEDDERS, FUSEMOE_MODEL

    for i, e in enumerate(EMBEDDERS):
        (tmp_path / e.triton_model / "1").mkdir(parents=True)
        (tmp_path / e.triton_model / "1" / "build.json").write_text(json.dumps(
            {"size": "tiny", "pretrained": e.id == "E11"}))
    (tmp_path / FUSEMOE_MODEL / "1").mkdir(parents=True)
    (tmp_path / FUSEMOE_MODEL / "1" / "fusemoe.manifest.json").write_text(json.dumps(
        {"version": "trained-20261206-0badf00d", "sha256": "c" * 64, "file": "x", "extra": {}}))
    made = provenance.of(tmp_path)
    assert (made.profile, made.checkpoint, made.sha256) == (
        "pretrained", "trained-20261206-0badf00d", "c" * 64)
    assert made.commit == provenance.commit() != NOT_RECORDED
    (tmp_path / EMBEDDERS[10].triton_model / "1" / "build.json").write_text('{"size": "tiny"}')
    assert provenance.profile_of(tmp_path) == "tiny"
    (tmp_path / EMBEDDERS[0].triton_model / "1" / "build.json").write_text('{"size": "full"}')
    assert provenance.profile_of(tmp_path) == "full"


def test_every_report_names_its_commit_profile_and_checkpoint():
    reports = provenance.report_files()
    assert len(reports) >= 20
    missing = [p.relative_to(provenance.REPORTS) for p in reports if provenance.parse(p) is None]
    assert missing == [], "reports without a provenance line"


def test_a_stale_quote_is_found_unless_the_readme_says_so():
    """The check itself, on a README of two passages quoting the same report."""
    report = next(p for p in provenance.report_files() if provenance.parse(p) is not None)
    made = provenance.parse(report)
    name = report.relative_to(provenance.REPORTS)
    text = (f"FUSED 0.9 (perf/reports/{name}).\n\n"
            f"FUSED 0.8 (perf/reports/{name}; stale: measured on an earlier build).\n")
    other = Provenance("c", made.profile, "trained-20261206-0badf00d", "s")
    if made.profile == "full":
        assert unmarked_stale(other, text) == []  # the full profile serves the seeded init
        return
    assert [r for r, _ in unmarked_stale(other, text)] == [report.name]
    if made.identity is not None:
        assert unmarked_stale(made, text) == []


@pytest.mark.trained
def test_the_readme_quotes_no_stale_report_unmarked(repository, served_fusemoe):
    """A README passage that names a report measured on another FuseMoE than the one a build
    of this commit serves (or a report that does not say) must say "stale" itself: such
    figures are regenerated or marked, never silently quoted."""
    served = provenance.of(repository)
    assert served.identity is not None, served
    assert unmarked_stale(served) == [], "README figures from stale reports, not marked stale"

"""What a report measured: the commit, the build profile and the FuseMoE checkpoint.

Every report under perf/reports/ carries one line, written by the code that writes the report,
right under its title::

    Measured on: commit `1a2b3c4`, profile `pretrained`, FuseMoE `trained-20261206-64abceda`
    (sha256 `a615af32f5e4...`).

A checkpoint's name is ``trained-<day trained>-<digest>``; the digest names the training
settings, the training data and the blocks they were computed from (``ensemble.train
.version_name``), so two builds of one commit train checkpoints of the same digest on any day.
``current`` compares by it: a report is current when its checkpoint's digest is the served
one's. Reports written before this line existed were given it by ``python -m perf.provenance
--backfill``: the commit that last wrote them, the checkpoint they name (when they name
exactly one) and "not recorded" for what they never said.

    python -m perf.provenance             # each report's provenance, and whether current
    python -m perf.provenance --backfill  # add the line to reports that have none
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ensemble.fusemoe import SEEDED_VERSION

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "perf" / "reports"
NOT_RECORDED = "not recorded"
LEAD = "Measured on:"
LINE = re.compile(r"^Measured on: commit `(?P<commit>[^`]+)`, profile `(?P<profile>[^`]+)`, "
                  r"FuseMoE `(?P<checkpoint>[^`]+)` \(sha256 `(?P<sha256>[^`]+)`\)\.$", re.MULTILINE)
TRAINED = re.compile(r"\btrained-\d{8}-([0-9a-f]{8})\b")
SEEDED = re.compile(r"\bseeded-init-\d+\b")


@dataclass(frozen=True)
class Provenance:
    commit: str
    profile: str
    checkpoint: str  # the FuseMoE version, "seeded-init-1" or NOT_RECORDED
    sha256: str  # of its weights, or NOT_RECORDED

    def line(self) -> str:
        return (f"{LEAD} commit `{self.commit}`, profile `{self.profile}`, FuseMoE "
                f"`{self.checkpoint}` (sha256 `{self.sha256}`).")

    @property
    def identity(self) -> str | None:
        """The checkpoint's digest (the seeded init's name): what two builds agree on."""
        found = TRAINED.fullmatch(self.checkpoint)
        if found:
            return found.group(1)
        return self.checkpoint if SEEDED.fullmatch(self.checkpoint) else None


def expected_identity(served: Provenance, profile: str) -> str | None:
    """The checkpoint a build of this commit serves in ``profile``, given what the project's
    build serves (``served``): the full profile serves the seeded init (Makefile), the
    others the checkpoint `make train` trains for their blocks."""
    if profile == "full":
        return SEEDED_VERSION
    return served.identity if profile == served.profile else None


def current(made: Provenance | None, served: Provenance) -> bool:
    """Whether a report's checkpoint is the one a build of this commit serves."""
    return (made is not None and made.identity is not None
            and made.identity == expected_identity(served, made.profile))


def commit(root: Path = ROOT) -> str:
    """HEAD's short hash, ``+changes`` when the working tree differs from it (outside
    perf/reports, which a run is about to write)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short=7", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      ":(exclude)perf/reports", ":(exclude)perf/results")
    except (OSError, subprocess.CalledProcessError):
        return NOT_RECORDED
    return f"{head}+changes" if changed else head


def profile_of(repository: Path) -> str:
    """The build profile a repository was made with, from its models' build records: ``full``
    (E1 at its published size), ``pretrained`` (some real checkpoint in it) or ``tiny``."""
    from export.registry import EMBEDDERS

    infos = []
    for e in EMBEDDERS:
        path = repository / e.triton_model / "1" / "build.json"
        if path.is_file():
            infos.append(json.loads(path.read_text()))
    if not infos:
        return NOT_RECORDED
    if infos[0].get("size") == "full":
        return "full"
    return "pretrained" if any(i.get("pretrained") for i in infos) else "tiny"


def checkpoint_of(folder: Path) -> tuple[str, str]:
    """The version and sha256 a FuseMoE folder's manifest records (NOT_RECORDED without one)."""
    from export.artifacts import manifest_path
    from export.layout import FUSEMOE_STEM

    path = manifest_path(folder, FUSEMOE_STEM)
    if not path.is_file():
        return NOT_RECORDED, NOT_RECORDED
    manifest = json.loads(path.read_text())
    return manifest["version"], manifest["sha256"]


def served(repository: Path) -> tuple[str, str]:
    """The version and sha256 of the FuseMoE the repository serves."""
    from export.registry import FUSEMOE_MODEL

    return checkpoint_of(repository / FUSEMOE_MODEL / "1")


def of(repository: Path, checkpoint: Path | None = None) -> Provenance:
    """What a run on ``repository`` measures; ``checkpoint``: a FuseMoE folder it scored
    instead of the served one."""
    version, sha256 = checkpoint_of(checkpoint) if checkpoint is not None else served(repository)
    return Provenance(commit(), profile_of(repository), version, sha256)


def stamped(text: str, provenance: Provenance) -> str:
    """``text`` with its provenance line under the title (replacing one already there)."""
    text = re.sub(LINE.pattern + r"\n\n?", "", text, flags=re.MULTILINE)
    title, _, rest = text.partition("\n")
    if not rest.startswith("\n"):
        rest = "\n" + rest
    return f"{title}\n\n{provenance.line()}\n{rest}"


def write(path: Path, text: str, repository: Path | None = None,
          checkpoint: Path | None = None) -> Path:
    """Write a report with the provenance of a run on ``repository`` (the project's)."""
    from export.repository import REPOSITORY

    path.write_text(stamped(text, of(repository or REPOSITORY, checkpoint)))
    return path


def parse(path: Path) -> Provenance | None:
    found = LINE.search(path.read_text())
    if found is None:
        return None
    return Provenance(**found.groupdict())


def report_files(root: Path = REPORTS) -> list[Path]:
    """Every report: the Markdown files (a folder's README.md included)."""
    return sorted(root.rglob("*.md"))


def backfill(path: Path, checkpoints: Path) -> Provenance | None:
    """Give a report written before provenance lines its line: the commit that last wrote it,
    the profile its name says (``-full``) or its checkpoint shows (a trained FuseMoE:
    ``pretrained``, the profile `make train` trains for), and the one checkpoint it names
    with that checkpoint's sha256 when the checkpoint is still here. None when it has one."""
    if parse(path) is not None:
        return None
    text = path.read_text()
    try:
        last = subprocess.run(["git", "log", "-1", "--format=%h", "--abbrev=7", "--", str(path)],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        last = ""
    names = sorted({m.group(0) for m in TRAINED.finditer(text)})
    checkpoint, sha256 = NOT_RECORDED, NOT_RECORDED
    if len(names) == 1:
        checkpoint = names[0]
        sha256 = checkpoint_of(checkpoints / checkpoint)[1]
    # A trained FuseMoE: `make train` on the default profile's blocks (the full profile
    # serves the seeded init).
    profile = ("full" if "full" in path.stem else "pretrained" if names else NOT_RECORDED)
    if not names and profile == "full" and "seeded" in text:
        checkpoint = SEEDED_VERSION  # the full profile serves the seeded init (Makefile)
    made = Provenance(last or NOT_RECORDED, profile, checkpoint, sha256)
    path.write_text(stamped(text, made))
    return made


def main(argv: list[str] | None = None) -> int:
    from export.build import TRAINED_CHECKPOINTS
    from export.repository import REPOSITORY

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backfill", action="store_true")
    args = parser.parse_args(argv)
    now = of(REPOSITORY)
    print(f"served: {now.checkpoint} ({now.profile})")
    for path in report_files():
        made = backfill(path, TRAINED_CHECKPOINTS) if args.backfill else None
        made = made or parse(path)
        state = ("no provenance line" if made is None else
                 "current" if current(made, now) else "stale")
        print(f"{path.relative_to(REPORTS)}: {state}"
              + (f" ({made.checkpoint}, {made.commit})" if made else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

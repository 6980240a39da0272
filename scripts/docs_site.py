"""mkdocs hook: the site's files are the repository's own (tracked, or new and not ignored),
each at its path in the repository. The README and the pages under docs/ then link to each
other, to the reports (``../perf/reports/bench.md``) and to the code as they do on disk, and
mkdocs' strict validation fails the build on a link to anything the repository does not
hold, or to an anchor a page does not have."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mkdocs.structure.files import File, Files


def repository_files(root: Path) -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "-z"], cwd=root, check=True, capture_output=True).stdout
    return sorted(p for p in listed.decode().split("\0") if p and (root / p).is_file())


def on_files(files: Files, config) -> Files:
    root = Path(config.config_file_path).resolve().parent
    return Files([File(p, src_dir=str(root), dest_dir=config.site_dir,
                       use_directory_urls=config.use_directory_urls)
                  for p in repository_files(root)])

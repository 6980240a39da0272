"""Hot swap: serve a new FuseMoE checkpoint without stopping the server.

    python -m ensemble.rollout CHECKPOINT_DIR [--url 127.0.0.1:8000]

The checkpoint is verified (its manifest's sha256, and that it was trained on the blocks
this repository serves), copied into the next version folder of the ``fusemoe`` model, and
loaded through Triton's model repository API with the admin key header. Triton loads the
new version while the current one keeps answering, then retires the old one (version
policy: latest). Every answer carries FUSION_VERSION, the manifest version that produced it.
The cached entry point (fused_text_cached) then gets a new version too: Triton's cache key
holds the model version, so no answer of the old FuseMoE is served from the cache afterwards.
A later ``make build`` starts over from version 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from ensemble import fusemoe
from ensemble.server import REPOSITORY, admin_headers, admin_key
from export.artifacts import verified
from export.build import embedder_fingerprints
from export.layout import BUILD_INFO
from export.registry import CACHED_MODEL, FUSEMOE_MODEL


class RolloutError(RuntimeError):
    pass


def versions(repo: Path, name: str = FUSEMOE_MODEL) -> list[int]:
    model = repo / name
    return sorted(int(p.name) for p in model.iterdir() if p.is_dir() and p.name.isdigit())


def stage(checkpoint: Path, repo: Path = REPOSITORY) -> int:
    """Copy a verified checkpoint into the next version folder; returns that version."""
    _, manifest = verified(checkpoint, fusemoe.WEIGHTS_STEM)
    if manifest.extra.get("embedder_fingerprints") != embedder_fingerprints(repo):
        raise RolloutError(f"{checkpoint}: trained on other blocks than {repo} serves "
                           "(embedder_fingerprints differ); retrain with `make train`")
    current = versions(repo)
    version = (current[-1] if current else 0) + 1
    target = repo / FUSEMOE_MODEL / str(version)
    tmp = target.with_name(f".{version}.staging")
    shutil.rmtree(tmp, ignore_errors=True)
    fusemoe.install(checkpoint, tmp)
    shutil.copyfile(repo / FUSEMOE_MODEL / str(current[0]) / "model.py", tmp / "model.py")
    (tmp / BUILD_INFO).write_text(json.dumps(
        {"rollout": True, "checkpoint": str(checkpoint), "sha256": manifest.sha256,
         "source": f"FuseMoE {manifest.version}"}, indent=2) + "\n")
    tmp.rename(target)  # Triton never sees a half-copied version folder
    return version


def stage_cached(repo: Path) -> int:
    """The next (empty) version folder of the cached ensemble; returns that version."""
    version = versions(repo, CACHED_MODEL)[-1] + 1
    folder = repo / CACHED_MODEL / str(version)
    folder.mkdir()
    (folder / ".keep").write_text("")
    return version


def load(url: str, key: str | None, model: str = FUSEMOE_MODEL,
         timeout_s: float = 300.0) -> None:
    """Ask the server to load ``model`` again (it picks up the newest version)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=timeout_s,
                                              connection_timeout=timeout_s)
    try:
        client.load_model(model, headers=admin_headers("http", key) if key else None)
    finally:
        client.close()


def served_versions(url: str) -> list[str]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        return client.get_model_metadata(FUSEMOE_MODEL)["versions"]
    finally:
        client.close()


def rollout(checkpoint: Path, url: str, repo: Path = REPOSITORY, key: str | None = None,
            ) -> int:
    version = stage(checkpoint, repo)
    try:
        load(url, key)
    except Exception:
        shutil.rmtree(repo / FUSEMOE_MODEL / str(version), ignore_errors=True)
        raise
    cached = stage_cached(repo)
    try:
        load(url, key, CACHED_MODEL)
    except Exception:
        shutil.rmtree(repo / CACHED_MODEL / str(cached), ignore_errors=True)
        raise
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a folder written by `make train`")
    parser.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP host:port")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        version = rollout(args.checkpoint, args.url, args.repository, admin_key())
    except Exception as err:  # noqa: BLE001 - one line for the operator
        print(f"rollout failed: {err}", file=sys.stderr)
        return 1
    print(f"fusemoe version {version} loaded in {time.perf_counter() - start:.1f} s; "
          f"served versions: {served_versions(args.url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

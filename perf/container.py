"""The CPU image measured: build time from nothing, size by layer, start-to-ready, memory.

    python -m perf.container [--build] [--starts 3]

``--build`` first removes the image, its base and podman's build cache, then times
``docker/image.sh`` (what ``make image`` runs after ``make train``). Each start runs the image
as the README says (read-only, /tmp tmpfs, 1 GB /dev/shm, published ports), times it to
``/v2/health/ready`` and to the first answer of fused_text, reads the container's memory
(its cgroup's current usage) once warm, and stops it. Writes perf/reports/container.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import numpy as np

from ensemble.server import free_port
from perf import provenance
from perf.workload import REPORTS, ROOT, T0

IMAGE = os.environ.get("IMAGE", "localhost/fusedembed:cpu")
BASE = "localhost/fusedembed-base:bookworm"
ENV = dict(os.environ, CONTAINERS_CONF=os.environ.get(
    "CONTAINERS_CONF", str(ROOT / "docker" / "containers.conf")))


# The image's label naming what it was built from (source_digest()).
SOURCE_LABEL = "fusedembed.source"


def source_digest() -> str:
    """What an image built here now would run: the project's files (tracked and untracked,
    not ignored: what docker/image.sh stages, by content; tests, reports and Markdown left
    out, they change no behaviour) and the trained FuseMoE checkpoint it copies (by name: the name
    carries the checkpoint's hash)."""
    import contextlib
    import io

    from export.build import trained_checkpoint

    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    digest = hashlib.sha256()
    skip = (b"perf/reports/", b"perf/results/", b"tests/")
    for name in sorted(f for f in files if f and not f.startswith(skip)
                       and not f.endswith(b".md")):
        path = ROOT / name.decode()
        if path.is_file():
            digest.update(name + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    with contextlib.redirect_stdout(io.StringIO()):
        checkpoint = trained_checkpoint(ROOT / "model_repository")
    digest.update((checkpoint.name if checkpoint else "seeded").encode())
    return digest.hexdigest()[:16]


def image_source(image: str = IMAGE) -> str | None:
    """The source digest an image was built from (None: no such image, or no label)."""
    found = podman("image", "inspect", "--format", f'{{{{index .Labels "{SOURCE_LABEL}"}}}}',
                   image, check=False)
    return found.stdout.strip() or None if found.returncode == 0 else None


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True,
                          check=check, timeout=timeout)


def engine_problem() -> str | None:
    """Why no container can run here, or None."""
    try:
        info = podman("info", check=False)
    except FileNotFoundError:
        return "no container engine: podman is not installed (apt-get install podman)"
    if info.returncode != 0:
        return f"podman cannot run here: {info.stderr.strip()[-300:]}"
    return None


def wait_ready(port: int, problem: Callable[[], str | None] = lambda: None,
               timeout: float = 900) -> float:
    """Seconds until ``/v2/health/ready`` on ``port`` answers 200; RuntimeError when
    ``problem`` names one (the container stopped) or after ``timeout``."""
    start = time.perf_counter()
    while True:
        trouble = problem()
        if trouble:
            raise RuntimeError(trouble)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                        timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"not ready in {timeout:.0f} s")
        time.sleep(0.5)


def build() -> float:
    for image in (IMAGE, BASE):
        podman("rmi", "--force", image, check=False)
    podman("image", "prune", "--all", "--force", check=False)
    podman("builder", "prune", "--all", "--force", check=False)
    start = time.perf_counter()
    subprocess.run(["bash", str(ROOT / "docker" / "image.sh")], env=ENV, check=True)
    return time.perf_counter() - start


def layers() -> list[tuple[str, float]]:
    """The image's layers over 1 MB, newest first: (what made it, GB)."""
    rows = []
    for layer in json.loads(podman("history", "--format", "json", IMAGE).stdout):
        if layer["size"] > 1_000_000:
            made_by = re.sub(r"(dir|file):[0-9a-f]{64} ", "", layer["CreatedBy"])
            made_by = made_by.replace("/bin/sh -c ", "").replace("#(nop) ", "")
            rows.append((" ".join(made_by.split())[:100], layer["size"] / 1e9))
    return rows


def infer(port: int) -> float:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = [grpcclient.InferInput("TEXT", [1, 1], "BYTES"),
              grpcclient.InferInput("TIMESTAMP", [1, 1], "INT64")]
    inputs[0].set_data_from_numpy(np.array([[b"the first request"]], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([[T0]], dtype=np.int64))
    start = time.perf_counter()
    fused = client.infer("fused_text", inputs).as_numpy("FUSED")
    assert fused.shape == (1, 1536)
    return time.perf_counter() - start


def memory_mib(name: str) -> float:
    stats = json.loads(podman("stats", "--no-stream", "--format", "json", name).stdout)
    usage = stats[0]["mem_usage"].split("/")[0].strip()  # e.g. "3.1GB"
    units = {"kB": 1e3 / 2**20, "MB": 1e6 / 2**20, "GB": 1e9 / 2**20}
    for unit, scale in units.items():
        if usage.endswith(unit):
            return float(usage[: -len(unit)]) * scale
    return float(usage.rstrip("B")) / 2**20


def start_once(i: int) -> dict:
    http, grpc = free_port(), free_port()
    name = f"fusedembed-bench-{os.getpid()}-{i}"
    begin = time.perf_counter()
    podman("run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp",
           "--shm-size", "1g", "-p", f"127.0.0.1:{http}:8000", "-p", f"127.0.0.1:{grpc}:8001",
           "-e", "FUSEDEMBED_ADMIN_KEY=bench", IMAGE)
    try:
        wait_ready(http)
        ready = time.perf_counter() - begin
        first = infer(grpc)
        time.sleep(5)
        return {"ready_s": ready, "first_request_s": first, "memory_mib": memory_mib(name)}
    finally:
        stop = time.perf_counter()
        podman("stop", "--time", "40", name, check=False)
        stopped = time.perf_counter() - stop
        podman("rm", "--force", "--volumes", name, check=False)  # and its anonymous volumes
        print(f"  start {i + 1}: stopped in {stopped:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="store_true", help="build from nothing, timed")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--digest", action="store_true",
                        help="print what an image built now would be labelled with, and stop")
    args = parser.parse_args(argv)
    if args.digest:
        print(source_digest())
        return 0
    built_s = build() if args.build else None
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout) / 1e9
    runs = []
    for i in range(args.starts):
        runs.append(start_once(i))
        print(f"  start {i + 1}: {runs[-1]}", flush=True)
    readies = ", ".join(f"{r['ready_s']:.1f}" for r in runs)
    lines = [
        "# The CPU container image",
        "",
        (f"Command: `python -m perf.container{' --build' if args.build else ''} --starts "
        f"{args.starts}` on this machine (2 cores; podman "
        f"{podman('--version').stdout.split()[-1]}, runc). Image `{IMAGE}` from docker/Containerfile."),
        "",
        "| measure | value |",
        "|---|---|",
    ]
    if built_s is not None:
        lines.append(f"| `docker/image.sh` from nothing (base made with mmdebstrap, no layer "
                     f"cached, packages downloaded) | {built_s / 60:.1f} min |")
    lines += [
        f"| image size | {size:.2f} GB |",
        (f"| start to `/v2/health/ready`, median of {len(runs)} | "
        f"{statistics.median(r['ready_s'] for r in runs):.1f} s "
        f"({readies}) |"),
        (f"| first fused_text request after ready, median | "
        f"{statistics.median(r['first_request_s'] for r in runs) * 1000:.0f} ms |"),
        (f"| container memory once warm (cgroup usage), median | "
        f"{statistics.median(r['memory_mib'] for r in runs) / 1024:.2f} GiB |"),
        "",
        "Layers over 1 MB (GB):",
        "",
        "| layer | GB |",
        "|---|---:|",
        *(f"| `{created.replace('|', '/')}` | {gb:.2f} |" for created, gb in layers()),
        "",
    ]
    path = REPORTS / "container.md"
    provenance.write(path, "\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

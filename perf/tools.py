"""The real perf_analyzer, installed into .run/perf-tools/ without root, and Race A's peers
in venvs of their own: infinity-emb (.run/infinity-venv) and the in-process libraries
(.run/libraries-venv), each from a frozen requirements file.

    python -m perf.tools          # install (idempotent) and print the versions

The binary comes from the ``tritonclient==2.44.0`` manylinux wheel (``bin/perf_analyzer``);
it links against ``libb64.so.0d`` (Debian's ``libb64-0d``, fetched with ``apt-get download``
and unpacked, so no root is needed) and ``libcudart.so.12`` (the ``nvidia-cuda-runtime-cu12``
wheel). Both wheels are pinned by sha256; the Debian package is checked by apt's signed index.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".run" / "perf-tools"
PIP = Path(sys.executable).with_name("pip")
WHEELS = {
    "tritonclient==2.44.0":
        "ed8a64ecbb7594ea196dfdc9678d6356b24fdf484995f53400004a195ef33749",
    "nvidia-cuda-runtime-cu12==12.9.79":
        "25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3",
}
DEB = "libb64-0d"
INFINITY = ROOT / ".run" / "infinity-venv"
INFINITY_REQUIREMENTS = ROOT / "perf" / "requirements-infinity.txt"
LIBRARIES = ROOT / ".run" / "libraries-venv"
LIBRARIES_REQUIREMENTS = ROOT / "perf" / "requirements-libraries.txt"


def perf_analyzer() -> Path:
    return TOOLS / "bin" / "perf_analyzer"


def environment() -> dict[str, str]:
    lib = str(TOOLS / "lib")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH")
                                    else "")
    return env


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _extract(wheel: Path, member_suffix: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(member_suffix)]
        if not names:
            raise SystemExit(f"{wheel.name}: no {member_suffix}")
        target.write_bytes(z.read(names[0]))


def install() -> Path:
    """perf_analyzer and its two libraries under .run/perf-tools; returns the binary."""
    binary = perf_analyzer()
    if binary.is_file() and (TOOLS / "lib" / "libb64.so.0d").is_file() and \
            (TOOLS / "lib" / "libcudart.so.12").is_file():
        return binary
    (TOOLS / "bin").mkdir(parents=True, exist_ok=True)
    (TOOLS / "lib").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for spec, digest in WHEELS.items():
            print(f"perf tools: downloading {spec}", flush=True)
            subprocess.run([str(PIP), "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "-d", str(work), spec], check=True)
            name = spec.split("==")[0].replace("-", "_")
            wheel = next(work.glob(f"{name}-*.whl"))
            if _sha256(wheel) != digest:
                raise SystemExit(f"{wheel.name}: sha256 {_sha256(wheel)} != pinned {digest}")
        _extract(next(work.glob("tritonclient-*.whl")), "bin/perf_analyzer", binary)
        binary.chmod(0o755)
        _extract(next(work.glob("nvidia_cuda_runtime_cu12-*.whl")), "lib/libcudart.so.12",
                 TOOLS / "lib" / "libcudart.so.12")
        print(f"perf tools: downloading Debian {DEB}", flush=True)
        subprocess.run(["apt-get", "download", DEB], cwd=work, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deb = next(work.glob(f"{DEB}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "deb")], check=True)
        lib = next((work / "deb").rglob("libb64.so.0d"))
        (TOOLS / "lib" / "libb64.so.0d").write_bytes(lib.read_bytes())
    return binary


def version() -> str:
    out = subprocess.run([str(install()), "--version"], env=environment(), capture_output=True,
                         text=True, check=True)
    return (out.stdout + out.stderr).strip()


def frozen_venv(venv: Path, requirements: Path) -> Path:
    """A venv made from a frozen requirements file (made again when the file changes);
    returns its bin folder."""
    stamp = venv / "requirements.txt"
    wanted = requirements.read_text()
    if (venv / "bin" / "python").is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return venv / "bin"
    print(f"perf tools: installing {requirements.name} into {venv.relative_to(ROOT)} "
          "(a few minutes)", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "-r",
                    str(requirements)], check=True)
    stamp.write_text(wanted)
    return venv / "bin"


def infinity() -> Path:
    """infinity-emb's ``infinity_emb`` script (perf/requirements-infinity.txt)."""
    return frozen_venv(INFINITY, INFINITY_REQUIREMENTS) / "infinity_emb"


def libraries() -> Path:
    """The Python of the in-process libraries' venv (perf/requirements-libraries.txt)."""
    return frozen_venv(LIBRARIES, LIBRARIES_REQUIREMENTS) / "python"


def locust(http_url: str, grpc_url: str, users: int, seconds: int, prefix: Path,
           gateway_url: str | None = None) -> list[dict]:
    """perf/locustfile.py headless (HTTP and gRPC users, valid and bad requests; with
    ``gateway_url`` the OpenAI-route user too) for ``seconds``; returns the rows of its
    statistics CSV (one per request name, and "Aggregated")."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    print(f"locust: {users} users for {seconds} s ...", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "perf" / "locustfile.py"),
         "--headless", "-u", str(users), "-r", str(max(1, users // 4)), "-t", f"{seconds}s",
         "--host", f"http://{http_url}", "--grpc-url", grpc_url, "--csv", str(prefix),
         "--only-summary", "--stop-timeout", "30",
         *(["--gateway-url", gateway_url, "HttpUser", "GrpcUser", "OpenAIUser"] if gateway_url
           else ["HttpUser", "GrpcUser"])])
    try:
        proc.wait(timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        # Its statistics are written; a gRPC channel closed at interpreter exit under
        # gevent can hang the process.
        proc.kill()
        proc.wait()
    with open(f"{prefix}_stats.csv") as f:
        return list(csv.DictReader(f))


if __name__ == "__main__":
    print(version())
    print(f"infinity-emb: {infinity()}")
    print(f"libraries: {libraries()}")

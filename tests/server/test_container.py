"""The CPU image (docker/Containerfile, `make image`) started with published ports, read-only,
as the non-root user, its admin key from a mounted secret file: fused_text answers over
HTTP and gRPC through tritonclient, and the container stops cleanly.

Skipped, with the reason, where no container engine can run; the image is built (by
docker/image.sh, as `make image` does) when it is missing."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from ensemble.server import ADMIN_HEADER
from tests.server.conftest import free_port

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("IMAGE", "localhost/fusedembed:cpu")
ENV = dict(os.environ, CONTAINERS_CONF=os.environ.get(
    "CONTAINERS_CONF", str(ROOT / "docker" / "containers.conf")))


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True,
                          check=check, timeout=timeout)


def engine_problem() -> str | None:
    try:
        info = podman("info", check=False)
    except FileNotFoundError:
        return "no container engine: podman is not installed (apt-get install podman)"
    if info.returncode != 0:
        return f"podman cannot run here: {info.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        subprocess.run(["bash", str(ROOT / "docker" / "image.sh")], env=ENV | {"IMAGE": IMAGE},
                       check=True, timeout=3600)
    secret = tmp_path_factory.mktemp("secret") / "admin-key"
    secret.write_text("key-from-a-mounted-secret\n")
    secret.chmod(0o644)
    ports = {8000: free_port(), 8001: free_port(), 8002: free_port()}
    name = f"fusedembed-test-{os.getpid()}"
    started = time.monotonic()
    podman("run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp",
           "--shm-size", "1g", *(a for inner, outer in ports.items()
                                 for a in ("-p", f"127.0.0.1:{outer}:{inner}")),
           "-v", f"{secret}:/run/secrets/admin-key:ro",
           "-e", "FUSEDEMBED_ADMIN_KEY_FILE=/run/secrets/admin-key", IMAGE)
    try:
        deadline = time.monotonic() + 900
        while True:
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running":
                pytest.fail(f"container {state}: {podman('logs', name, check=False).stderr[-2000:]}")
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{ports[8000]}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("the container was not ready in 900 s")
            time.sleep(1)
        print(f"container ready {time.monotonic() - started:.1f} s after start")
        yield name, ports
    finally:
        stopped = podman("stop", "--time", "40", name, check=False, timeout=120)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name, check=False)
        podman("rm", "--force", name, check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert code.stdout.strip() == "0", "fusedembed-serve did not exit cleanly on SIGTERM"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_fused_text_through_published_ports(container, protocol):
    _, ports = container
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(f"127.0.0.1:{ports[8000 if protocol == 'http' else 8001]}")
    texts = [b"served from a container", b"over published ports"]
    inputs = [mod.InferInput("TEXT", [2, 1], "BYTES"), mod.InferInput("TIMESTAMP", [2, 1], "INT64")]
    inputs[0].set_data_from_numpy(np.array([[t] for t in texts], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.full((2, 1), 1_700_000_000, dtype=np.int64))
    fused = client.infer("fused_text", inputs).as_numpy("FUSED")
    assert fused.shape == (2, 1536) and fused.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(fused[0], fused[1])


def test_runs_as_non_root_with_the_mounted_admin_key(container):
    name, ports = container
    assert podman("exec", name, "id", "-u").stdout.strip() == "1000"
    url = f"http://127.0.0.1:{ports[8000]}/v2/repository/index"

    def index(headers: dict[str, str]) -> int:
        request = urllib.request.Request(url, data=b"{}", headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code

    assert index({}) != 200  # restricted without the key
    assert index({ADMIN_HEADER: "key-from-a-mounted-secret"}) == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[8002]}/metrics", timeout=10) as r:
        assert b"fusedembed_fusion_version_info" in r.read()

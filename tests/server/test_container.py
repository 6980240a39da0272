"""The CPU image (docker/Containerfile, `make image`) started with published ports, read-only,
as the non-root user, its admin key from a mounted secret file: fused_text answers over
HTTP and gRPC through tritonclient, and the container stops cleanly. Then the same image as
the `cpu` service of docker/compose.yaml, brought up and down with podman-compose.

Skipped, with the reason, where no container engine can run; the image is built (by
docker/image.sh, as `make image` does) when it is missing or was built from other files
than the tree's. The gateway answers the OpenAI route from the image too."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from ensemble.server import ADMIN_HEADER, free_port
from perf import container as container_tools

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
IMAGE = container_tools.IMAGE
ENV = container_tools.ENV
podman = container_tools.podman


@pytest.fixture(scope="module")
def image() -> str:
    problem = container_tools.engine_problem()
    if problem:
        pytest.skip(problem)
    # Built when missing or older than the tree (its label names what it was built from).
    if container_tools.image_source(IMAGE) != container_tools.source_digest():
        subprocess.run(["bash", str(ROOT / "docker" / "image.sh")], env=ENV | {"IMAGE": IMAGE},
                       check=True, timeout=3600)
    # An engine that builds may still be unable to run a container (no runtime, no cgroups).
    probe = podman("run", "--rm", "--entrypoint", "true", IMAGE, check=False)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run a container here: {probe.stderr.strip()[-300:]}")
    return IMAGE


def wait_ready(port: int, is_running) -> None:
    try:
        print(f"ready {container_tools.wait_ready(port, is_running):.1f} s after start")
    except RuntimeError as err:
        pytest.fail(str(err))


def wait_gateway(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                pytest.fail(f"the gateway did not answer on {port} within {timeout:.0f} s")
            time.sleep(0.5)


def fused(protocol: str, url: str, texts: list[bytes]) -> np.ndarray:
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(url)
    inputs = [mod.InferInput("TEXT", [len(texts), 1], "BYTES"),
              mod.InferInput("TIMESTAMP", [len(texts), 1], "INT64")]
    inputs[0].set_data_from_numpy(np.array([[t] for t in texts], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.full((len(texts), 1), 1_700_000_000, dtype=np.int64))
    return client.infer("fused_text", inputs).as_numpy("FUSED")


@pytest.fixture(scope="module")
def container(image, tmp_path_factory):
    secret = tmp_path_factory.mktemp("secret") / "admin-key"
    secret.write_text("key-from-a-mounted-secret\n")
    secret.chmod(0o644)
    ports = {8000: free_port(), 8001: free_port(), 8002: free_port(), 8080: free_port()}
    name = f"fusedembed-test-{os.getpid()}"
    podman("run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp",
           "--shm-size", "1g", *(a for inner, outer in ports.items()
                                 for a in ("-p", f"127.0.0.1:{outer}:{inner}")),
           "-v", f"{secret}:/run/secrets/admin-key:ro",
           "-e", "FUSEDEMBED_ADMIN_KEY_FILE=/run/secrets/admin-key", image)

    def is_running() -> str | None:
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state != "running":
            return f"container {state}: {podman('logs', name, check=False).stderr[-2000:]}"
        return None

    try:
        wait_ready(ports[8000], is_running)
        wait_gateway(ports[8080])  # started once Triton is ready
        yield name, ports
    finally:
        stopped = podman("stop", "--time", "40", name, check=False, timeout=120)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name, check=False)
        podman("rm", "--force", "--volumes", name, check=False)  # and its anonymous volumes
    assert stopped.returncode == 0, stopped.stderr
    assert code.stdout.strip() == "0", "fusedembed-serve did not exit cleanly on SIGTERM"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_fused_text_through_published_ports(container, server, protocol):
    """The container answers what the loopback server of the same build answers."""
    _, ports = container
    port = ports[8000 if protocol == "http" else 8001]
    texts = [b"served from a container", b"over published ports"]
    vectors = fused(protocol, f"127.0.0.1:{port}", texts)
    assert vectors.shape == (2, 1536) and vectors.dtype == np.float32
    loopback = fused("grpc", server.grpc_url, texts)
    cosine = np.sum(vectors * loopback, axis=1)
    assert np.all(cosine >= 0.9999), cosine


def test_the_gateway_answers_the_openai_route(container, server):
    _, ports = container
    body = json.dumps({"model": "fusedembed", "input": ["from the image's gateway"],
                       "encoding_format": "base64"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{ports[8080]}/v1/embeddings", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        answer = json.loads(r.read())
    vector = np.frombuffer(base64.b64decode(answer["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (1536,)
    # A fused text does not depend on its timestamp (the time blocks weigh nothing in the
    # trained FuseMoE), so the gateway's "now" is compared with the loopback server at T0.
    loopback = fused("grpc", server.grpc_url, [b"from the image's gateway"])[0]
    assert float(vector @ loopback) >= 0.9999
    assert answer["usage"]["prompt_tokens"] > 2


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


def test_compose_cpu_service_serves(image, server, tmp_path):
    compose = Path(sys.executable).parent / "podman-compose"
    if not compose.is_file():
        pytest.fail("podman-compose is missing from the venv (requirements.txt installs it)")
    ports = {"HTTP_PORT": free_port(), "GRPC_PORT": free_port(), "METRICS_PORT": free_port(),
             "GATEWAY_PORT": free_port()}
    env = ENV | {k: str(v) for k, v in ports.items()} | {
        "FUSEDEMBED_ADMIN_KEY": "compose-key", "FUSEDEMBED_IMAGE": image}
    project = f"fusedembed-test-{os.getpid()}"
    command = [str(compose), "-p", project, "-f", str(ROOT / "docker" / "compose.yaml"),
               "--profile", "cpu"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*command, *args], check=False, env=env, capture_output=True,
                              text=True, timeout=300)

    up = run("up", "-d", "fusedembed")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        name = f"{project}_fusedembed_1"

        def is_running() -> str | None:
            state = podman("inspect", "--format", "{{.State.Status}}", name,
                           check=False).stdout.strip()
            return None if state == "running" else f"compose service {state or 'missing'}"

        wait_ready(ports["HTTP_PORT"], is_running)
        vectors = fused("grpc", f"127.0.0.1:{ports['GRPC_PORT']}", [b"served by compose"])
        loopback = fused("grpc", server.grpc_url, [b"served by compose"])
        assert float(vectors[0] @ loopback[0]) >= 0.9999
    finally:
        down = run("down", "--volumes")
    assert down.returncode == 0, down.stdout + down.stderr

"""`make serve`'s launcher: ready on the configured ports with the gateway beside Triton,
stopped cleanly (both) by a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ensemble.server import ROOT, free_port

pytestmark = pytest.mark.server

# Two small models are enough to see the launcher start and stop stub processes.
MODELS = ("tok_bert_uncased", "e02_temporal_recent")


def _processes_mentioning(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_signal_stops_the_server_and_leaves_no_stub(repository, tmp_path, signum):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in MODELS:
        (repo / name).symlink_to(repository / name)
    ports = {"HTTP_PORT": free_port(), "GRPC_PORT": free_port(), "METRICS_PORT": free_port(),
             "GATEWAY_PORT": free_port()}
    env = dict(os.environ) | {k: str(v) for k, v in ports.items()}
    proc = subprocess.Popen([sys.executable, "-m", "ensemble.server", "--repository", str(repo)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Press Ctrl-C"):  # the end of the usage text
            break
    assert any(line.startswith("fusedembed is ready") for line in lines), "".join(lines[-20:])
    assert any(f"127.0.0.1:{ports['HTTP_PORT']}" in line for line in lines)
    gateway = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
    assert any(f"{gateway}/v1/embeddings" in line for line in lines), "".join(lines)
    with urllib.request.urlopen(f"{gateway}/info", timeout=10) as response:
        assert json.loads(response.read())["model_id"] == "fusedembed"
    gateway_pids = _processes_mentioning(f"--port {ports['GATEWAY_PORT']}")
    assert gateway_pids
    stubs = [pid for pid in _processes_mentioning(str(repo)) if pid != proc.pid]
    assert len(stubs) >= 1 + len(MODELS)  # the server and one stub per model

    proc.send_signal(signum)
    proc.communicate(timeout=90)
    assert proc.returncode == 0
    assert _processes_mentioning(str(repo)) == []
    assert not [pid for pid in gateway_pids if Path(f"/proc/{pid}").exists()]

"""tritonserver killed: the watchdog starts it again on its loopback ports while the fronts
keep the public ones, and frees the shared memory the dead server held."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from ensemble.server import SHM_PREFIX, Ports, TritonServer, free_ports

pytestmark = pytest.mark.server

# Two small models are enough to see the server, its stubs and its regions come back.
MODELS = ("tok_bert_uncased", "e02_temporal_recent")


def regions(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {line[line.find("/dev/shm/"):].removesuffix(" (deleted)")
            for line in maps.splitlines() if SHM_PREFIX in line}


def terms(url: str) -> list[str]:
    client = httpclient.InferenceServerClient(url)
    ids = httpclient.InferInput("IDS", [1, 2], "INT32")
    ids.set_data_from_numpy(np.array([[7592, 2088]], dtype=np.int32))
    answer = client.infer("tok_bert_uncased", [ids])
    return [t.decode() for t in answer.as_numpy("TERMS").reshape(-1)]


def test_a_killed_tritonserver_comes_back_behind_the_same_fronts(repository, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in MODELS:
        (repo / name).symlink_to(repository / name)
    server = TritonServer(repo, Ports(*free_ports(3)),
                          tmp_path / "tritonserver.log")
    server.start(timeout=300)
    try:
        before = terms(server.http_url)
        fronts = {p: f.pid for p, f in server.fronts.items()}
        held = regions(server.pid)
        assert held
        killed = server.pid
        os.kill(killed, signal.SIGKILL)
        start = time.monotonic()
        while time.monotonic() - start < 120:
            if "tritonserver" in server.watchdog.restarts and server.ready():
                break
            time.sleep(0.2)
        back_s = time.monotonic() - start
        print(f"serving again {back_s:.1f} s after SIGKILL")
        assert "tritonserver" in server.watchdog.restarts
        assert server.ready() and server.pid != killed
        assert {p: f.pid for p, f in server.fronts.items()} == fronts
        assert terms(server.http_url) == before
        assert not [r for r in held if Path(r).exists()]  # the dead server's regions freed
    finally:
        server.stop()

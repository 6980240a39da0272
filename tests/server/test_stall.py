"""A stalled pipeline is seen and healed: an embedder that hangs alive with requests queued
behind it makes /v2/health/live fail, and the launcher restarts tritonserver."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2 as mc

from ensemble.server import Ports, TritonServer, free_ports
from ensemble.stall import StallDetector
from export.build import linked_repository

pytestmark = pytest.mark.server

T0 = 1_700_000_000
HUNG = "e08_graph"
WINDOW_S = 10.0


def infer(url: str, text: str) -> str:
    client = httpclient.InferenceServerClient(url, network_timeout=180)
    text_in = httpclient.InferInput("TEXT", [1, 1], "BYTES")
    text_in.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    stamp = httpclient.InferInput("TIMESTAMP", [1, 1], "INT64")
    stamp.set_data_from_numpy(np.array([[T0]], dtype=np.int64))
    try:
        fused = client.infer("fused_text", [text_in, stamp]).as_numpy("FUSED")
    except Exception as err:  # noqa: BLE001 - an error answer is an answer
        return f"error: {err}"
    assert fused.shape == (1, 1536)
    return "vector"


def live(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/live", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_a_stall_fails_liveness_and_the_launcher_restarts_tritonserver(repository,
                                                                        tmp_path):
    hold = tmp_path / "hold"

    def settings(cfg: mc.ModelConfig) -> None:
        if cfg.name == HUNG:
            cfg.parameters["inject_hold_path"].string_value = str(hold)

    repo = linked_repository(repository, tmp_path / "repo", settings, "a hold on e08_graph")
    server = TritonServer(repo, Ports(*free_ports(3)), tmp_path / "triton.log",
                          stall=StallDetector(window_s=WINDOW_S, busy_window_s=60.0))
    server.start(timeout=600)
    try:
        assert server.watchdog is not None
        server.watchdog.stall_every_s = 1.0
        server.watchdog.heal_stalls = False  # first only seen: liveness fails
        assert infer(server.http_url, "healthy") == "vector"
        assert live(server.http_url)[0] == 200
        hold.touch()
        stalled_at = time.monotonic()
        answers: list[str] = []
        # More requests than the hung model's two instances take: some wait in its queue.
        # One at a time, further apart than its batching delay: all eight sent together can
        # fit in two batches, one held in each instance, and leave nothing pending to judge.
        clients = [threading.Thread(target=lambda i=i: answers.append(
            infer(server.http_url, f"queued {i}"))) for i in range(8)]
        for c in clients:
            c.start()
            time.sleep(0.3)
        while (answer := live(server.http_url))[0] == 200:
            assert time.monotonic() - stalled_at < WINDOW_S + 30, "the stall was not seen"
            time.sleep(0.2)
        assert answer[0] == 503 and HUNG in answer[1], answer
        seen_s = time.monotonic() - stalled_at
        server.watchdog.heal_stalls = True  # now healed
        while not server.watchdog.stalls:
            assert time.monotonic() - stalled_at < seen_s + 15, "no restart for the stall"
            time.sleep(0.2)
        hold.unlink()  # the model is fine again once the server starts over
        assert server.watchdog.stalls[0] == [HUNG]
        while not ("tritonserver" in server.watchdog.restarts and server.ready()):
            assert time.monotonic() - stalled_at < 60, "not serving again within 60 s"
            time.sleep(0.2)
        back_s = time.monotonic() - stalled_at
        print(f"stall seen after {seen_s:.1f} s, serving again {back_s:.1f} s after it began")
        for c in clients:
            c.join(timeout=120)
        assert len(answers) == 8  # every queued request was answered, by a vector or an error
        assert infer(server.http_url, "after the restart") == "vector"
        assert live(server.http_url)[0] == 200
    finally:
        hold.unlink(missing_ok=True)
        server.stop()


def test_a_launcher_that_stops_reporting_is_not_live(repository, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("tok_bert_uncased",):
        (repo / name).symlink_to(repository / name)
    server = TritonServer(repo, Ports(*free_ports(3)), tmp_path / "triton.log")
    server.start(timeout=300)
    try:
        assert live(server.http_url)[0] == 200
        assert server.watchdog is not None
        server.watchdog.stopped.set()  # the watchdog hangs or dies
        server.watchdog.join()
        deadline = time.monotonic() + 30
        while live(server.http_url)[0] == 200:
            assert time.monotonic() < deadline, "still live with no verdict for 30 s"
            time.sleep(0.5)
        status, body = live(server.http_url)
        assert status == 503 and "has not reported" in body
        assert server.ready()  # ready is Triton's: the models still answer
    finally:
        server.stop()

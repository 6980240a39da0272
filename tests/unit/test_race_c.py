"""perf.race_c's own logic: which side computes each block, infinity's command line, the
medians and ratios of a point, the headline ratio and the report's verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.registry import EMBEDDERS, Input
from perf import race_a, race_c


def test_every_token_embedder_is_computed_by_exactly_one_side():
    tokens = {e.id for e in EMBEDDERS if e.input is Input.TOKENS}
    served, client = set(race_c.INFINITY_BLOCKS), set(race_c.CLIENT_BLOCKS)
    assert served | client == tokens
    assert not served & client
    assert all(race_c.CLIENT_BLOCKS[b] for b in client)  # each says why


def test_infinity_serves_every_model_in_one_process_with_its_own_settings(monkeypatch):
    monkeypatch.setattr(race_a.tools, "infinity", lambda: Path("/venv/bin/infinity_emb"))
    folders = {"E1": Path("/m/e01"), "E11": Path("/m/e11")}
    cmd = race_c.Infinity(folders, Path("/tmp/log")).command()
    assert cmd[:2] == ["/venv/bin/infinity_emb", "v2"]
    assert cmd.count("--model-id") == 2 and cmd.count("--engine") == 2
    ids = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--model-id"]
    names = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--served-model-name"]
    assert ids == ["/m/e01", "/m/e11"] and names == ["e1", "e11"]
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--pooling-method"] == ["mean"] * 2
    assert cmd.count("--port") == 1


def _row(items: float, p95: float, errors: int = 0) -> dict:
    return {"items_per_s": items, "p95_ms": p95, "errors": errors}


def test_a_point_is_the_median_over_rounds_of_each_side_and_of_the_window_ratios():
    rows = {race_c.OURS: [_row(10, 100), _row(12, 90), _row(30, 80)],
            race_c.THEIRS: [_row(5, 200), _row(12, 180, errors=1), _row(10, 40)]}
    p = race_c.point_summary(rows)
    assert p["ours_items_per_s"] == 12 and p["theirs_items_per_s"] == 10
    assert p["throughput_ratio"] == pytest.approx(2.0)  # median of 2.0, 1.0, 3.0
    assert p["p95_ratio"] == pytest.approx(0.5)  # median of 0.5, 0.5, 2.0
    assert p["errors"] == 1


def _point(batch: int, clients: int, ours: float, theirs: float, p95_ratio: float = 0.5):
    return {"batch": batch, "concurrency": clients, "ours_items_per_s": ours,
            "theirs_items_per_s": theirs, "throughput_ratio": ours / theirs,
            "ours_p95_ms": 100.0, "theirs_p95_ms": 100.0 / p95_ratio,
            "p95_ratio": p95_ratio, "errors": 0}


def test_the_headline_is_best_batch_32_over_best_batch_32():
    points = [_point(32, 1, 6.0, 2.0), _point(32, 8, 9.0, 4.0), _point(1, 1, 50.0, 1.0)]
    assert race_c.headline(points) == pytest.approx(9.0 / 4.0)


def _result(points: list[dict]) -> dict:
    return {"seconds": 30.0, "rounds": 2, "infinity_version": "0.0.78",
            "infinity_blocks": list(race_c.INFINITY_BLOCKS), "engines": race_c.ENGINES,
            "longformer_window": 128,
            "engine_notes": race_c.ENGINE_NOTES,
            "client_blocks": race_c.CLIENT_BLOCKS,
            "load_s": {"triton": 20.0, "infinity": 60.0},
            "agreement": {"FUSED": 0.99, "E1": 0.98}, "points": points,
            "full_vs_infinity_multimodel_throughput_ratio": race_c.headline(points)}


@pytest.mark.parametrize(("ours", "verdict"), [(3.0, "met"), (2.9, "not met")])
def test_the_report_says_whether_the_throughput_goal_is_met(ours, verdict):
    text = "\n".join(race_c.report_lines(_result([_point(32, 8, ours, 2.0)])))
    assert f"goal ≥ 1.5: {verdict})" in text
    assert f"= **{ours / 2.0:.2f}**" in text
    assert all(f"- {b}:" in text for b in race_c.CLIENT_BLOCKS)


def test_the_report_says_whether_p95_is_lower_at_every_point():
    lower = race_c.report_lines(_result([_point(32, 8, 3.0, 2.0), _point(1, 1, 3.0, 2.0)]))
    higher = race_c.report_lines(_result([_point(32, 8, 3.0, 2.0),
                                          _point(1, 1, 3.0, 2.0, p95_ratio=1.2)]))
    assert "p95 lower at every point: yes" in lower[-1]
    assert "p95 lower at every point: no" in higher[-1]


def test_a_model_the_optimum_engine_cannot_run_gets_the_torch_engine_and_a_reason(monkeypatch):
    monkeypatch.setattr(race_a.tools, "infinity", lambda: Path("/venv/bin/infinity_emb"))
    folders = {b: Path(f"/m/{b}") for b in race_c.INFINITY_BLOCKS}
    cmd = race_c.Infinity(folders, Path("/tmp/log")).command()
    engines = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--engine"]
    assert engines == [race_c.ENGINES[b] for b in race_c.INFINITY_BLOCKS]
    assert set(race_c.ENGINE_NOTES) == {b for b, e in race_c.ENGINES.items() if e != "optimum"}
    # every per-model list option is given once per model, or once for all
    for option in ("--model-id", "--engine", "--pooling-method", "--batch-size"):
        assert cmd.count(option) == len(folders), option
    assert cmd.count("--no-bettertransformer") == 1


def test_an_embedder_reconnects_when_the_server_closed_its_idle_connection():
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn
        timeout = 0.2  # closes a connection idle this long, as uvicorn does after 5 s

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(request)
            body = json.dumps({"data": [{"embedding": [1.0, 0.0]}
                                        for _ in request["input"]]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        infinity = race_c.Infinity({}, Path("/tmp/log"))
        infinity.port = server.server_address[1]
        embed = infinity.embedder("E1")
        assert embed(["a", "b"]).shape == (2, 2)
        time.sleep(0.6)  # the server has closed the kept-alive connection
        assert embed(["c"]).shape == (1, 2)
    finally:
        server.shutdown()
    assert [r["input"] for r in seen] == [["passage: a", "passage: b"], ["passage: c"]]
    assert {r["model"] for r in seen} == {"e1"}


def test_the_narrowed_longformer_window_gives_the_published_window_s_vectors():
    from types import SimpleNamespace

    import numpy as np
    import torch
    from transformers import LongformerConfig, LongformerModel

    torch.manual_seed(0)
    config = LongformerConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64,
                              max_position_embeddings=600, attention_window=512)
    model = LongformerModel(config, add_pooling_layer=False).eval()
    rng = np.random.default_rng(0)
    lengths = {"short": 9, "longest": 37}  # token counts, <s> and </s> included
    ids = {t: [0, *rng.integers(5, 100, n - 2).tolist(), 2] for t, n in lengths.items()}
    hand = SimpleNamespace(longformer=model, max_length={"E5": 512}, prepared=lambda t: t,
                           tokenizers={"E5": lambda texts, **kw: {
                               "input_ids": [ids[t] for t in texts]}})

    def states(text: str):
        x = torch.tensor([ids[text]])
        glob = torch.zeros_like(x)
        glob[:, 0] = 1
        with torch.inference_mode():
            return model(input_ids=x, global_attention_mask=glob).last_hidden_state

    published = {t: states(t) for t in ids}
    window = race_c.narrow_longformer(hand, list(ids))
    assert window == 128  # the smallest multiple of 64 whose half covers 37 tokens
    assert all(layer.attention.self.one_sided_attn_window_size == 64
               for layer in model.encoder.layer)
    for t in ids:
        torch.testing.assert_close(states(t), published[t], rtol=1e-4, atol=1e-5)


def test_a_point_a_side_could_not_answer_is_reported_and_left_out_of_the_headline():
    failed = {"batch": 32, "concurrency": 8, "failed": "theirs, round 1: no answer in 30 s"}
    points = [_point(32, 1, 6.0, 2.0), failed]
    assert race_c.headline(points) == pytest.approx(3.0)
    text = "\n".join(race_c.report_lines(_result(points)))
    assert "| 32 | 8 | failed: theirs, round 1: no answer in 30 s |" in text

"""What the stall check costs, and how long a stall takes to heal at the default settings.

    python -m perf.stall [--rounds 3] [--seconds 20]

1. Cost: one sample of the launcher's stall check (Triton's metrics, the stubs' CPU from
   /proc, the detector) timed 100 times under load; then fused_text's throughput (batch 8,
   concurrency 4, over the public gRPC port) in windows that alternate between the watchdog
   sampling every second (five times the default) and not sampling at all, ``--rounds`` of
   each.
2. Healing: e08_graph held (alive, answering nothing; the fault parameter
   ``inject_hold_path``) with fused_text requests queued behind it (8 at once, then one a
   second, as traffic goes on arriving), at the default 30 s
   window and 5 s sampling: seconds until /v2/health/live fails, until the launcher restarts
   tritonserver, and until the server serves again.

Writes perf/reports/stall.md and stall.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from perf import provenance
from perf.workload import (
    RUN,
    closed_loop,
    free_ports,
    held_repository,
    machine,
    sentences,
    triton_send,
)

REPORTS = Path(__file__).resolve().parent / "reports"
HUNG = "e08_graph"
NEVER = 1e9


def live_status(url: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/live", timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def cost(server, rounds: int, seconds: float) -> dict:
    watchdog = server.watchdog
    texts = sentences(256)
    stop = threading.Event()

    def background() -> None:  # the load the samples are timed under
        send = triton_send("grpc", server.grpc_url, "fused_text")
        i = 0
        while not stop.is_set():
            send(texts[i % 200:i % 200 + 8])
            i += 8

    loader = threading.Thread(target=background, daemon=True)
    loader.start()
    wall, cpu = [], []
    watchdog.heal_stalls = False
    for _ in range(100):
        t, c = time.perf_counter(), time.process_time()
        watchdog.check_stall()
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
        time.sleep(0.05)
    stop.set()
    loader.join()
    watchdog.heal_stalls = True
    windows = []
    for r in range(rounds):
        for every_s in ((1.0, NEVER) if r % 2 == 0 else (NEVER, 1.0)):
            watchdog.stall_every_s = every_s
            watchdog.next_sample = 0.0 if every_s < NEVER else NEVER
            result = closed_loop(lambda: triton_send("grpc", server.grpc_url, "fused_text"),
                                 texts, 8, 4, seconds, 1536)
            windows.append({"sampling_every_s": None if every_s == NEVER else every_s,
                            "items_per_s": result["items_per_s"]})
            print(f"  sampling {'every 1 s' if every_s < NEVER else 'off':>9}: "
                  f"{result['items_per_s']:.1f} texts/s", flush=True)
    watchdog.stall_every_s = 5.0
    watchdog.next_sample = 0.0
    on = [w["items_per_s"] for w in windows if w["sampling_every_s"]]
    off = [w["items_per_s"] for w in windows if not w["sampling_every_s"]]
    return {"sample_wall_ms_median": statistics.median(wall),
            "sample_cpu_ms_median": statistics.median(cpu),
            "sample_wall_ms_p95": sorted(wall)[94], "windows": windows,
            "throughput_ratio_on_off": statistics.median(on) / statistics.median(off)}


def healing(server, hold: Path) -> dict:
    import numpy as np
    import tritonclient.http as httpclient

    def request(i: int) -> None:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=300)
        text = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[f"queued {i}".encode()]], dtype=np.object_))
        stamp = httpclient.InferInput("TIMESTAMP", [1, 1], "INT64")
        stamp.set_data_from_numpy(np.array([[1_700_000_000]], dtype=np.int64))
        with contextlib.suppress(Exception):  # an error is an answer too
            client.infer("fused_text", [text, stamp])

    hold.touch()
    begin = time.monotonic()
    clients = [threading.Thread(target=request, args=(i,), daemon=True) for i in range(8)]
    for c in clients:
        c.start()
    arriving = threading.Event()

    def trickle() -> None:  # traffic goes on arriving: a request a second, queued behind
        i = 8
        while not arriving.wait(1.0):
            c = threading.Thread(target=request, args=(i,), daemon=True)
            c.start()
            clients.append(c)
            i += 1

    trickling = threading.Thread(target=trickle, daemon=True)
    trickling.start()
    seen = restarted = None
    while time.monotonic() - begin < 300:
        if seen is None and live_status(server.http_url) == 503:
            seen = time.monotonic() - begin
        if restarted is None and server.watchdog.stalls:
            restarted = time.monotonic() - begin
            hold.unlink()
            arriving.set()
        if restarted is not None and "tritonserver" in server.watchdog.restarts \
                and server.ready():
            break
        time.sleep(0.2)
    serving = time.monotonic() - begin
    arriving.set()
    trickling.join()
    hold.unlink(missing_ok=True)
    for c in clients:
        c.join(timeout=300)
    return {"live_failed_s": seen, "restart_s": restarted, "serving_again_s": serving,
            "window_s": server.stall.window_s, "sample_every_s": server.watchdog.stall_every_s,
            "requests": len(clients), "unanswered": sum(c.is_alive() for c in clients)}


def write(result: dict) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "stall.json").write_text(json.dumps(result, indent=1) + "\n")
    c, h = result["cost"], result["healing"]
    def secs(value: float | None) -> str:
        return "never (within 300 s)" if value is None else f"{value:.1f} s"

    lines = [
        "# The stall check: its cost, and a stall healed", "",
        (f"`python -m perf.stall --rounds {result['rounds']} --seconds {result['seconds']:g}` "
        f"on {result['machine']}, the toy profile."), "",
        "## Cost", "",
        (f"One sample (Triton's metrics, the stubs' CPU, the detector), 100 timed under load: "
        f"median {c['sample_wall_ms_median']:.1f} ms wall, {c['sample_cpu_ms_median']:.1f} ms "
        f"of the launcher's CPU (p95 {c['sample_wall_ms_p95']:.1f} ms); at the default one "
        f"sample per 5 s, {c['sample_cpu_ms_median'] / 5000 * 100:.2f} % of one core."), "",
        "fused_text, batch 8, concurrency 4, public gRPC port, windows alternating:", "",
        "| window | stall sampling | texts/s |", "|---|---|---|",
        *[f"| {i + 1} | {'every 1 s' if w['sampling_every_s'] else 'off'} | "
          f"{w['items_per_s']:.1f} |" for i, w in enumerate(c["windows"])], "",
        (f"Median with sampling every second over median without: "
        f"**{c['throughput_ratio_on_off']:.3f}x** (five times the default rate)."), "",
        "## A stall healed", "",
        (f"e08_graph held with fused_text requests queued behind it, window "
         f"{h['window_s']:g} s, a sample every {h['sample_every_s']:g} s (the defaults): "
         f"/v2/health/live failed after {secs(h['live_failed_s'])}, the launcher restarted "
         f"tritonserver after {secs(h['restart_s'])}, and it served again "
         f"**{secs(h['serving_again_s'])}** after the stall began (goal 60 s); of the "
         f"{h['requests']} requests sent (8 at once, then one a second until the restart), "
         f"left without an answer: {h['unanswered']}."),
        ""]
    path = REPORTS / "stall.md"
    provenance.write(path, "\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    from ensemble.server import Ports, TritonServer

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    repo, hold = held_repository(RUN / "stall", HUNG)
    server = TritonServer(repo, Ports(*free_ports(3)), repo.parent / "triton.log")
    print("starting tritonserver ...", flush=True)
    server.start(timeout=900)
    try:
        print("cost ...", flush=True)
        measured = cost(server, args.rounds, args.seconds)
        print("healing ...", flush=True)
        healed = healing(server, hold)
    finally:
        hold.unlink(missing_ok=True)
        server.stop()
    result = {"machine": machine(), "rounds": args.rounds, "seconds": args.seconds,
              "cost": measured, "healing": healed}
    print(f"wrote {write(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

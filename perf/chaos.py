"""Chaos run: faults one after another under steady mixed load, and what every request got.

    python -m perf.chaos [--hang-s 30]          # make chaos

The load runs the whole time, each client a thread with its own connection: fused_text over
HTTP (batches of 1-4, short texts and texts of about 512 tokens), fused_text over gRPC with
a 10 s deadline, the fail-safe entry point over HTTP, and the OpenAI route of the gateway.
After an error a client waits 0.25 s before it sends again (as the client library's retries
back off; without it six clients answered 503 at once spin at thousands of requests a second
and take the CPU a restarting server needs). The faults, in turn, each followed by time to
recover:

1. a cancellation storm: 8 gRPC clients, 32 texts a call, deadlines of 1 to 300 ms;
2. one embedder (e08_graph) hung, alive, for ``--hang-s`` s (the fault parameter
   ``inject_hold_path``: every batch waits while a file exists);
3. a stub of e12_late_interaction killed (SIGKILL);
4. tritonserver killed (SIGKILL);
5. the gateway cut off from Triton for 10 s (it reaches Triton through a TCP relay that
   drops every connection and refuses new ones);
6. 2,000 idle connections held open, half against the gateway, half against the HTTP port;
7. a client that sends its body a byte a second.

Each request counts for the phase in which it was sent. A request is **answered** with a
vector or an error status (HTTP status, gRPC code); **unanswered** when the connection
closed or timed out with neither (the client's own 10 s deadline on gRPC is its answer:
``DEADLINE_EXCEEDED``). A vector is **wrong** unless it equals (cosine >= 0.9999) the
healthy answer for the same text taken before the faults, or is the fail-safe's partial
answer (some block marked in ``MISSING``) of unit norm. Recovery: from the fault to the
first vector after the phase's last error. Memory: the server's resident MiB (tritonserver,
stubs, fronts) at the end of each phase. Writes perf/reports/chaos.md, .json and .png; exit
status 1 when any request is unanswered or wrong.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perf import provenance
from perf.workload import RUN, T0, free_ports, held_repository, machine, server_memory

REPORTS = Path(__file__).resolve().parent / "reports"
HUNG = "e08_graph"
KILLED_STUB = "e12_late_interaction"
GRPC_DEADLINE_S = 10.0
CLIENT_TIMEOUT_S = 180.0
ERROR_PAUSE_S = 0.25  # a client waits this long after an error before it sends again
WORDS = ["the", "server", "answers", "many", "requests", "with", "low", "latency", "while", "embedding", "models", "map", "sentences", "to", "vectors", "a", "man", "plays", "guitar", "on", "stage", "two", "dogs", "run", "through", "tall", "grass", "the", "market", "fell", "sharply", "after", "the", "announcement"]


def texts(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    short = [" ".join(rng.choices(WORDS, k=rng.randint(3, 30))) + f" #{i}" for i in range(48)]
    long = [" ".join(rng.choices(WORDS, k=520)) + f" #{i}" for i in range(8)]
    return short + long


@dataclass
class Outcome:
    client: str
    sent: float
    took: float
    kind: str  # vector | wrong | error | deadline | unanswered
    detail: str = ""


@dataclass
class Ledger:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)


class Relay(threading.Thread):
    """A TCP relay to ``target`` that can be cut (every connection dropped, new ones
    refused) and restored on the same port."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        super().__init__(daemon=True, name="relay")
        self.port, self.target = port, target
        self.open = threading.Event()
        self.open.set()
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()

    def run(self) -> None:
        while True:
            self.open.wait()
            listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
            listener.settimeout(0.2)
            with listener:
                while self.open.is_set():
                    try:
                        client, _ = listener.accept()
                    except TimeoutError:
                        continue
                    if not self.open.is_set():  # cut while this one was being accepted
                        client.close()
                        continue
                    try:
                        upstream = socket.create_connection(self.target)
                    except OSError:
                        client.close()
                        continue
                    with self.lock:
                        self.sockets |= {client, upstream}
                    for a, b in ((client, upstream), (upstream, client)):
                        threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    def pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.sockets.clear()

    def restore(self) -> None:
        self.open.set()


def matches(fused: np.ndarray, sent: list[str], reference: dict[str, np.ndarray]) -> bool:
    want = np.stack([reference[t] for t in sent])
    return bool(np.all(np.sum(fused * want, axis=1) >= 0.9999))


def http_status(err: Exception) -> str | None:
    status = getattr(err, "status", None)
    status = status() if callable(status) else status
    return str(status) if status else None


class Load:
    """The steady mixed load: one thread per client until ``stop``."""

    def __init__(self, server, gateway_url: str, pool: list[str],
                 reference: dict[str, np.ndarray], ledger: Ledger) -> None:
        self.server, self.gateway_url = server, gateway_url
        self.pool, self.reference, self.ledger = pool, reference, ledger
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.loop, args=(name, make), daemon=True)
                        for name, make in (("http", self.http_client), ("http", self.http_client),
                                           ("grpc-deadline", self.grpc_client),
                                           ("grpc-deadline", self.grpc_client),
                                           ("failsafe", self.failsafe_client),
                                           ("gateway", self.gateway_client))]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(CLIENT_TIMEOUT_S + 10)

    def loop(self, name: str, make) -> None:
        rng = random.Random(hash(name) ^ threading.get_ident())
        send = make()
        while not self.stop.is_set():
            sent = rng.sample(self.pool[:48], rng.randint(1, 4)) if rng.random() < 0.9 \
                else [rng.choice(self.pool[48:])]
            start = time.monotonic()
            try:
                kind, detail = send(sent)
            except Exception as err:  # noqa: BLE001 - classified, never lost
                kind, detail = classify(err)
                send = make()  # a fresh connection after any error
            self.ledger.add(Outcome(name, start, time.monotonic() - start, kind, detail))
            if kind != "vector":
                self.stop.wait(ERROR_PAUSE_S)

    def http_client(self, model: str = "fused_text"):
        """fused_text (or the fail-safe, whose marked partial answers need unit norm only)
        over HTTP."""
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.server.http_url,
                                                  network_timeout=CLIENT_TIMEOUT_S,
                                                  connection_timeout=CLIENT_TIMEOUT_S)

        def send(sent):
            result = client.infer(model, inputs(httpclient, sent))
            fused = result.as_numpy("FUSED")
            if model != "fused_text" and result.as_numpy("MISSING").any():
                ok = bool(np.allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-4))
                return ("vector", "partial") if ok else ("wrong", "partial")
            return ("vector", "") if matches(fused, sent, self.reference) else ("wrong", "")
        return send

    def failsafe_client(self):
        return self.http_client("fused_text_failsafe")

    def grpc_client(self):
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.server.grpc_url)

        def send(sent):
            result = client.infer("fused_text", inputs(grpcclient, sent),
                                  client_timeout=GRPC_DEADLINE_S)
            fused = result.as_numpy("FUSED")
            return ("vector", "") if matches(fused, sent, self.reference) else ("wrong", "")
        return send

    def gateway_client(self):
        host, port = self.gateway_url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=CLIENT_TIMEOUT_S)

        def send(sent):
            body = json.dumps({"model": "fusedembed", "input": sent, "timestamp": T0,
                               "encoding_format": "base64"})
            conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                return "error", f"HTTP {response.status}"
            fused = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                              for d in json.loads(payload)["data"]])
            return ("vector", "") if matches(fused, sent, self.reference) else ("wrong", "")
        return send


def inputs(module, sent: list[str]):
    text = module.InferInput("TEXT", [len(sent), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in sent], dtype=np.object_))
    stamp = module.InferInput("TIMESTAMP", [len(sent), 1], "INT64")
    stamp.set_data_from_numpy(np.full((len(sent), 1), T0, dtype=np.int64))
    return [text, stamp]


def classify(err: Exception) -> tuple[str, str]:
    """An exception as an answer (error status, the client's deadline) or as no answer."""
    text = str(err)
    status = http_status(err)
    if status and status.startswith("StatusCode."):
        code = status.removeprefix("StatusCode.")
        if code == "DEADLINE_EXCEEDED":
            return "deadline", code
        lost = ("Socket closed", "failed to connect", "Connection reset", "Stream removed",
                "recvmsg", "Broken pipe")
        if (code == "UNAVAILABLE" and any(m in text for m in lost)
                and "Triton did not answer" not in text):  # the front's own answer
            return "unanswered", f"{code}: {text[:80]}"
        return "error", code
    if status and status.isdigit():
        return "error", f"HTTP {status}"
    return "unanswered", f"{type(err).__name__}: {text[:80]}"


def storm(url: str, seconds: float) -> int:
    """8 gRPC clients sending 32 texts with deadlines of 1-300 ms for ``seconds``."""
    from perf.cancellation import DEADLINES_S, infer

    many = [f"a text that cannot be embedded in a millisecond {i}" for i in range(32)]
    sent = [0]
    end = time.monotonic() + seconds

    def client(deadline_s: float) -> None:
        while time.monotonic() < end:
            infer(url, many, deadline_s)
            sent[0] += 1

    threads = [threading.Thread(target=client, args=(d,)) for d in DEADLINES_S]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent[0]


def idle_connections(ports: list[int], n: int, seconds: float) -> int:
    """``n`` connections spread over ``ports``, opened and left silent for ``seconds``;
    how many were open at the end."""
    held = []
    for i in range(n):
        try:
            held.append(socket.create_connection(("127.0.0.1", ports[i % len(ports)]),
                                                 timeout=5))
        except OSError:
            pass
    time.sleep(seconds)
    still = 0
    for s in held:
        try:
            s.setblocking(False)
            still += s.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            still += 1  # open, nothing to read
        except OSError:
            pass
        s.close()
    return still


def slow_body(port: int, seconds: float) -> str:
    """A request whose 1 KiB body comes a byte a second; what it got back (if anything)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /v2/models/fused_text/infer HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: 1024\r\n\r\n")
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            s.sendall(b"{")
            time.sleep(1.0)
        s.settimeout(0.5)
        try:
            return s.recv(200).split(b"\r\n")[0].decode() or "closed by the server"
        except TimeoutError:
            return "still waiting for the body"
    except OSError as err:
        return f"closed by the server ({err.__class__.__name__})"
    finally:
        s.close()


@dataclass
class Phase:
    name: str
    start: float
    end: float = 0.0
    fault_at: float = 0.0
    note: str = ""
    memory_mib: float = 0.0


def run(hang_s: float, recover_s: float) -> dict:
    from ensemble.server import Gateway, Ports, TritonServer, stub_processes
    repo, hold = held_repository(RUN / "chaos", HUNG)
    work = repo.parent
    ports = free_ports(5)
    server = TritonServer(repo, Ports(*ports[:3]), work / "triton.log")
    print("starting tritonserver ...", flush=True)
    server.start(timeout=900)
    relay = Relay(ports[3], ("127.0.0.1", int(server.triton_grpc_url.rsplit(":", 1)[1])))
    relay.start()
    gateway = Gateway(f"127.0.0.1:{ports[3]}", ports[4], "127.0.0.1", work / "gateway.log")
    gateway.start()
    pool = texts()
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    reference = {}
    for t in pool:  # the healthy answers
        reference[t] = client.infer("fused_text", inputs(httpclient, [t])).as_numpy("FUSED")[0]
    ledger = Ledger()
    load = Load(server, gateway.url, pool, reference, ledger)
    phases: list[Phase] = []

    def memory() -> float:
        return float(sum(server_memory(server).values()))

    def phase(name: str, fault, seconds_after: float) -> None:
        p = Phase(name, time.monotonic())
        phases.append(p)
        print(f"{name} ...", flush=True)
        p.fault_at = time.monotonic()
        p.note = fault() or ""
        time.sleep(seconds_after)
        p.end = time.monotonic()
        p.memory_mib = memory()
        print(f"  {p.note}", flush=True)

    load.start()
    try:
        phase("steady load (no fault)", lambda: None, 15)
        phase("cancellation storm", lambda: f"{storm(server.grpc_url, 15)} calls with "
              "deadlines of 1-300 ms", recover_s)

        def hang():
            hold.touch()
            time.sleep(hang_s)
            hold.unlink()
            return f"{HUNG} held {hang_s:.0f} s"
        phase(f"one embedder hung {hang_s:.0f} s", hang, recover_s)

        def kill_stub():
            pid = stub_processes(server.pid)[KILLED_STUB]
            os.kill(pid, signal.SIGKILL)
            return f"{KILLED_STUB} stub {pid} killed"
        phase("a stub killed", kill_stub, recover_s)

        def kill_server():
            pid = server.pid
            os.kill(pid, signal.SIGKILL)
            return f"tritonserver {pid} killed"
        phase("tritonserver killed", kill_server, recover_s + 15)

        def cut():
            relay.target = ("127.0.0.1", int(server.triton_grpc_url.rsplit(":", 1)[1]))
            relay.cut()
            time.sleep(10)
            relay.restore()
            return "gateway cut off from Triton for 10 s"
        phase("gateway cut off 10 s", cut, recover_s)
        gateway_port = int(gateway.url.rsplit(":", 1)[1])

        def idle():
            still = idle_connections([gateway_port, server.ports.http], 2000, 20)
            return f"{still} of 2,000 still open after 20 s"
        phase("2,000 idle connections", idle, recover_s)
        phase("a body sent a byte a second", lambda: "the slow client: "
              + slow_body(server.ports.http, 20), recover_s)
    finally:
        load.join()
        hold.unlink(missing_ok=True)
        restarts = list(server.watchdog.restarts) if server.watchdog else []
        stalls = list(server.watchdog.stalls) if server.watchdog else []
        gateway.stop()
        server.stop()
    return summarise(ledger, phases, restarts, stalls)


def summarise(ledger: Ledger, phases: list[Phase], restarts: list[str],
              stalls: list[list[str]]) -> dict:
    t0 = phases[0].start
    rows = []
    for i, p in enumerate(phases):
        end = phases[i + 1].start if i + 1 < len(phases) else float("inf")
        mine = [o for o in ledger.outcomes if p.start <= o.sent < end]
        errors: dict[str, int] = {}
        for o in mine:
            if o.kind in ("error", "deadline"):
                errors[o.detail] = errors.get(o.detail, 0) + 1
        bad = [o for o in mine if o.kind != "vector"]
        last_bad = max((o.sent + o.took for o in bad), default=None)
        recovered = None
        if last_bad is not None:
            after = [o.sent + o.took for o in ledger.outcomes
                     if o.kind == "vector" and o.sent >= last_bad - 1e-9]
            if after:
                recovered = min(after) - p.fault_at
        rows.append({
            "phase": p.name, "note": p.note, "start_s": p.start - t0, "end_s": p.end - t0,
            "sent": len(mine), "vectors": sum(o.kind == "vector" for o in mine),
            "partial": sum(o.detail == "partial" for o in mine),
            "errors": errors, "unanswered": sum(o.kind == "unanswered" for o in mine),
            "unanswered_detail": sorted({o.detail for o in mine if o.kind == "unanswered"}),
            "wrong": sum(o.kind == "wrong" for o in mine),
            "p50_ms": float(np.median([o.took for o in mine]) * 1e3) if mine else None,
            "max_s": max((o.took for o in mine), default=0.0),
            "recovered_s": recovered, "memory_mib": p.memory_mib})
    series = [{"client": o.client, "sent_s": o.sent - t0, "took_s": o.took, "kind": o.kind}
              for o in ledger.outcomes]
    return {"machine": machine(), "phases": rows, "restarts": restarts, "stalls": stalls,
            "series": series}


def table(result: dict) -> list[str]:
    lines = [("| phase | sent | vectors (partial) | errors | unanswered | wrong | p50 ms | "
             "slowest s | recovered after s | memory MiB |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["phases"]:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "-"
        recovered = "-" if r["recovered_s"] is None else f"{r['recovered_s']:.1f}"
        lines.append(f"| {r['phase']} | {r['sent']} | {r['vectors']} ({r['partial']}) | "
                     f"{errors} | **{r['unanswered']}** | **{r['wrong']}** | "
                     f"{r['p50_ms']:.0f} | {r['max_s']:.1f} | {recovered} | "
                     f"{r['memory_mib']:.0f} |")
    return lines


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    colours = {"vector": "tab:green", "error": "tab:orange", "deadline": "tab:purple",
               "unanswered": "tab:red", "wrong": "black"}
    for kind, colour in colours.items():
        points = [(s["sent_s"], s["took_s"]) for s in result["series"] if s["kind"] == kind]
        if points:
            x, y = zip(*points)
            ax.scatter(x, y, s=6, c=colour, label=kind)
    for i, r in enumerate(result["phases"]):
        ax.axvspan(r["start_s"], r["end_s"], alpha=0.08 if i % 2 else 0.16, color="tab:blue")
        ax.text(r["start_s"], ax.get_ylim()[1] if ax.get_ylim()[1] > 0 else 1,
                r["phase"], rotation=90, va="top", fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("time the request was sent (s)")
    ax.set_ylabel("time to its answer (s)")
    ax.set_title("Chaos run: every request under steady mixed load, by what it got")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, hang_s: float) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "chaos.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, REPORTS / "chaos.png")
    total_unanswered = sum(r["unanswered"] for r in result["phases"])
    total_wrong = sum(r["wrong"] for r in result["phases"])
    lines = [
        "# Chaos run", "",
        f"`python -m perf.chaos --hang-s {hang_s:.0f}` (`make chaos`) on {result['machine']}.",
        ("Steady load the whole run: fused_text over HTTP (two clients) and over gRPC with a "
        f"{GRPC_DEADLINE_S:.0f} s deadline (two), the fail-safe over HTTP, the gateway's "
        "/v1/embeddings; 1-4 short texts a request, one in ten a text of about 512 tokens. "
        "Each request counts for the phase in which it was sent; an error is an answer with a "
        "status, `DEADLINE_EXCEEDED` is the gRPC client's own deadline; unanswered: the "
        "connection closed or timed out with no status. Wrong: a vector that is not the "
        "healthy one (cosine < 0.9999), the fail-safe's marked partial answers excepted."), "",
        *table(result), "",
        (f"Totals: **{total_unanswered} unanswered, {total_wrong} wrong**. Restarts by the "
        f"launcher's watchdog: {', '.join(result['restarts']) or 'none'}; stalls it found: "
        f"{result['stalls'] or 'none'}."), "",
        "What each fault did:", "",
        *[f"- {r['phase']}: {r['note'] or '-'}"
          + (f"; unanswered: {'; '.join(r['unanswered_detail'])}" if r['unanswered'] else "")
          for r in result["phases"]], "",
        "![chaos](chaos.png)", ""]
    path = REPORTS / "chaos.md"
    provenance.write(path, "\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hang-s", type=float, default=30.0)
    parser.add_argument("--recover-s", type=float, default=15.0)
    args = parser.parse_args(argv)
    result = run(args.hang_s, args.recover_s)
    path = write(result, args.hang_s)
    print("\n".join(table(result)))
    print(f"wrote {path}")
    bad = sum(r["unanswered"] + r["wrong"] for r in result["phases"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

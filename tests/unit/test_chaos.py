"""The chaos run's own logic: what counts as an answer, the phase table, the cuttable relay."""

import socket
import threading

from tritonclient.utils import InferenceServerException

from perf.chaos import Ledger, Outcome, Phase, Relay, classify, summarise


def test_statuses_are_answers_and_closed_connections_are_not():
    assert classify(InferenceServerException("full", status="503")) == ("error", "HTTP 503")
    assert classify(InferenceServerException("late", status="StatusCode.DEADLINE_EXCEEDED")) \
        == ("deadline", "DEADLINE_EXCEEDED")
    assert classify(InferenceServerException("overloaded", status="StatusCode.UNAVAILABLE")) \
        == ("error", "UNAVAILABLE")
    assert classify(InferenceServerException("Socket closed",
                                             status="StatusCode.UNAVAILABLE"))[0] == "unanswered"
    assert classify(InferenceServerException("Triton did not answer: Socket closed",
                                             status="StatusCode.UNAVAILABLE"))[0] == "error"
    assert classify(ConnectionResetError("reset by peer"))[0] == "unanswered"
    assert classify(TimeoutError("timed out"))[0] == "unanswered"


def test_each_request_counts_for_the_phase_it_was_sent_in():
    ledger = Ledger()
    for sent, kind, detail in ((0.5, "vector", ""), (10.5, "error", "HTTP 503"),
                               (11.0, "unanswered", "reset"), (12.0, "wrong", ""),
                               (13.0, "vector", "partial"), (21.0, "vector", "")):
        ledger.add(Outcome("http", sent, 0.5, kind, detail))
    phases = [Phase("calm", 0.0, 9.0, 0.0), Phase("fault", 10.0, 19.0, 10.0),
              Phase("after", 20.0, 25.0, 20.0)]
    rows = summarise(ledger, phases, ["tritonserver"], [])["phases"]
    assert [r["sent"] for r in rows] == [1, 4, 1]
    fault = rows[1]
    assert fault["errors"] == {"HTTP 503": 1}
    assert (fault["unanswered"], fault["wrong"], fault["partial"]) == (1, 1, 1)
    assert fault["recovered_s"] == 13.5 - 10.0  # the first vector after the last bad answer
    assert rows[0]["recovered_s"] is None


def test_the_relay_passes_bytes_and_refuses_while_cut():
    server = socket.create_server(("127.0.0.1", 0))

    def echo():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: [c.sendall(d) for d in iter(
                lambda: c.recv(1024), b"")], daemon=True).start()

    threading.Thread(target=echo, daemon=True).start()
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    relay = Relay(port, server.getsockname())
    relay.start()

    def roundtrip() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"ping")
            return s.recv(16)

    def answers() -> bool:
        for _ in range(50):
            try:
                return roundtrip() == b"ping"
            except OSError:
                threading.Event().wait(0.05)
        return False

    assert answers(), "the relay never answered"
    held = socket.create_connection(("127.0.0.1", port), timeout=2)
    held.sendall(b"open")
    assert held.recv(16) == b"open"
    relay.cut()
    assert held.recv(16) == b""  # dropped
    threading.Event().wait(0.5)
    try:
        roundtrip()
        raise AssertionError("a connection got through a cut relay")
    except OSError:
        pass
    relay.restore()
    assert answers(), "the relay did not come back"
    server.close()

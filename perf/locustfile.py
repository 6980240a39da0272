"""Locust users for fused_text: HTTP (KServe v2 JSON) and gRPC (tritonclient), valid and bad;
with ``--gateway-url`` also the OpenAI route of the gateway (OpenAIUser).

    locust -f perf/locustfile.py --host http://127.0.0.1:8000 --grpc-url 127.0.0.1:8001 \
        [--gateway-url http://127.0.0.1:8080 HttpUser GrpcUser OpenAIUser]

Valid requests (short texts, and a share of long ones of about 512 tokens, the limit of most
embedders) must get a 1536-D vector; bad ones (empty text, invalid UTF-8, a timestamp out of
range, an oversized text) must get a client error (HTTP 400, gRPC INVALID_ARGUMENT) that
names the field. A valid request refused by a full queue (HTTP 503, gRPC UNAVAILABLE) is
retried with back-off, as the client library does; a refusal is reported under its own name,
never as a lost request. Anything else is a failure. Request names say which kind each is,
so the statistics keep them apart.
"""

from __future__ import annotations

import random
import time

import grpc.experimental.gevent as grpc_gevent
import numpy as np
from locust import FastHttpUser, User, between, events, task

# Locust runs every user on one gevent loop: without this, a blocking gRPC call stalls the
# HTTP users too, and their latencies would measure the load generator, not the server.
grpc_gevent.init_gevent()

WORDS = ["the", "server", "answers", "many", "requests", "with", "low", "latency", "while", "embedding", "models", "map", "sentences", "to", "vectors", "a", "man", "plays", "guitar", "on", "stage", "two", "dogs", "run", "through", "tall", "grass", "def", "add", "a", "b", "return", "a", "plus", "b", "the", "market", "fell", "sharply", "after", "the", "announcement"]
T0 = 1_700_000_000


def sentence() -> str:
    return " ".join(random.choices(WORDS, k=random.randint(3, 40)))


def long_text() -> str:
    return " ".join(random.choices(WORDS, k=520))  # about 512 tokens


BACKOFF_S = (0.1, 0.2, 0.4, 0.8, 1.6, 2.0)  # the client library's Retry() delays


BAD = {
    "bad-empty": ("   ", T0, "empty or whitespace-only"),
    "bad-utf8": (b"\xff\xfe broken", T0, "not valid UTF-8"),
    "bad-timestamp": ("fine text", 9_999_999_999, "outside the accepted range"),
    "bad-oversize": ("x" * 70_000, T0, "bytes exceed the limit"),
}


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--grpc-url", default="127.0.0.1:8001", help="gRPC host:port")
    parser.add_argument("--gateway-url", default="http://127.0.0.1:8080",
                        help="the OpenAI-compatible gateway (OpenAIUser)")


def _json_body(text: str, stamp: int) -> dict:
    return {"inputs": [
        {"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]},
        {"name": "TIMESTAMP", "shape": [1, 1], "datatype": "INT64", "data": [stamp]}],
        "outputs": [{"name": "FUSED"}]}


class HttpUser(FastHttpUser):
    wait_time = between(0.0, 0.2)
    weight = 1

    def _valid(self, name: str, text: str) -> None:
        for delay in (*BACKOFF_S, None):
            with self.client.post("/v2/models/fused_text/infer", json=_json_body(text, T0),
                                  name=name, catch_response=True) as r:
                if r.status_code == 503 and delay is not None:
                    r.request_meta["name"] = f"{name} refused (retried)"
                    r.success()
                    time.sleep(delay * random.uniform(0.5, 1.0))
                    continue
                if r.status_code != 200:
                    r.failure(f"{r.status_code}: {r.text[:200]}")
                elif len(r.json()["outputs"][0]["data"]) != 1536:
                    r.failure("FUSED is not 1536-D")
                return

    @task(7)
    def valid(self) -> None:
        self._valid("http valid", sentence())

    @task(1)
    def valid_long(self) -> None:
        self._valid("http valid long", long_text())

    @task(2)
    def bad(self) -> None:
        name = random.choice([k for k in BAD if k != "bad-utf8"])  # JSON carries only text
        text, stamp, message = BAD[name]
        with self.client.post("/v2/models/fused_text/infer", json=_json_body(text, stamp),
                              name=f"http {name}", catch_response=True) as r:
            if r.status_code != 400 or message not in r.text:
                r.failure(f"expected a 400 naming the field, got {r.status_code}")
            else:
                r.success()


class GrpcUser(User):
    wait_time = between(0.0, 0.2)
    weight = 1

    def on_start(self) -> None:
        import tritonclient.grpc as grpcclient

        self.mod = grpcclient
        self.client = grpcclient.InferenceServerClient(self.environment.parsed_options.grpc_url)

    def on_stop(self) -> None:
        self.client.close()  # not left to __del__ at interpreter exit (hangs under gevent)

    def _infer(self, name: str, text, stamp: int, expect_error: str | None) -> None:
        mod = self.mod
        raw = text if isinstance(text, bytes) else text.encode()
        inputs = [mod.InferInput("TEXT", [1, 1], "BYTES"),
                  mod.InferInput("TIMESTAMP", [1, 1], "INT64")]
        inputs[0].set_data_from_numpy(np.array([[raw]], dtype=np.object_))
        inputs[1].set_data_from_numpy(np.array([[stamp]], dtype=np.int64))
        for delay in (*BACKOFF_S, None):
            start = time.perf_counter()
            exception, refused = None, False
            try:
                result = self.client.infer("fused_text", inputs, client_timeout=120,
                                           outputs=[mod.InferRequestedOutput("FUSED")])
                if expect_error is not None:
                    exception = AssertionError("a bad request got a vector")
                elif result.as_numpy("FUSED").shape != (1, 1536):
                    exception = AssertionError("FUSED is not 1536-D")
            except Exception as err:  # noqa: BLE001 - judged below
                status = getattr(err, "status", lambda: "")()
                refused = (expect_error is None and status == "StatusCode.UNAVAILABLE"
                           and delay is not None)
                if refused:
                    pass
                elif expect_error is None or expect_error not in str(err):
                    exception = err
                elif status != "StatusCode.INVALID_ARGUMENT":
                    exception = AssertionError(f"a bad request got {status}")
            events.request.fire(request_type="grpc",
                                name=f"{name} refused (retried)" if refused else name,
                                response_time=(time.perf_counter() - start) * 1000,
                                response_length=0, exception=exception, context={})
            if not refused:
                return
            time.sleep(delay * random.uniform(0.5, 1.0))

    @task(7)
    def valid(self) -> None:
        self._infer("grpc valid", sentence(), T0, None)

    @task(1)
    def valid_long(self) -> None:
        self._infer("grpc valid long", long_text(), T0, None)

    @task(2)
    def bad(self) -> None:
        name = random.choice(list(BAD))
        text, stamp, message = BAD[name]
        self._infer(f"grpc {name}", text, stamp, message)


class OpenAIUser(User):
    """POST /v1/embeddings as the OpenAI SDK sends it (base64), lists of 1 to 8 texts; a 429
    or 503 is back-pressure, retried with back-off; bad requests must get a 422."""

    wait_time = between(0.0, 0.2)
    weight = 1

    def on_start(self) -> None:
        from locust.contrib.fasthttp import FastHttpSession

        self.client = FastHttpSession(self.environment.parsed_options.gateway_url,
                                      self.environment.events.request, self)

    def _embed(self, name: str, texts: list[str]) -> None:
        body = {"model": "fusedembed", "input": texts, "encoding_format": "base64",
                "timestamp": T0}
        for delay in (*BACKOFF_S, None):
            with self.client.post("/v1/embeddings", json=body, name=name,
                                  catch_response=True) as r:
                if r.status_code in (429, 503) and delay is not None:
                    r.request_meta["name"] = f"{name} refused (retried)"
                    r.success()
                    time.sleep(delay * random.uniform(0.5, 1.0))
                    continue
                if r.status_code != 200:
                    r.failure(f"{r.status_code}: {r.text[:200]}")
                elif [len(d["embedding"]) for d in r.json()["data"]] != [8192] * len(texts):
                    r.failure("not one 1536-D float32 vector (8192 base64 characters) per text")
                return

    @task(7)
    def valid(self) -> None:
        self._embed("openai valid", [sentence() for _ in range(random.randint(1, 8))])

    @task(1)
    def valid_long(self) -> None:
        self._embed("openai valid long", [long_text()])

    @task(2)
    def bad(self) -> None:
        name = random.choice([k for k in BAD if k != "bad-utf8"])
        text, stamp, message = BAD[name]
        body = {"model": "fusedembed", "input": [text], "timestamp": stamp}
        with self.client.post("/v1/embeddings", json=body, name=f"openai {name}",
                              catch_response=True) as r:
            if r.status_code != 422 or message not in r.text:
                r.failure(f"expected a 422 naming the field, got {r.status_code}")
            else:
                r.success()

"""The public HTTP port: KServe v2 inference requests checked, everything passed to Triton."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import orjson
from aiohttp import web

from ensemble.front.checks import RequestFault, UnknownModel, check_http, parse_header_length
from ensemble.front.held import Abandoned, HeldBytes, ServerFull
from ensemble.front.specs import ModelSpecs, TritonUnavailable
from ensemble.stall import read_verdict

INFER = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
# Triton's generate extension maps JSON fields onto inputs by itself: no fusedembed model is
# generative, so the front does not offer it rather than leave it unchecked.
GENERATE = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/generate(?:_stream)?$")
REPOSITORY = "/v2/repository/"
LIVE = "/v2/health/live"
HEADER_LENGTH = "Inference-Header-Content-Length"
# Not passed on either way: hop-by-hop headers, and what the front recomputes (the body it
# forwards is the one it read, decompressed).
DROPPED = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
           "trailer", "transfer-encoding", "upgrade", "host", "content-length",
           "content-encoding"}
DROPPED_BACK = DROPPED - {"content-encoding"}  # Triton's compressed answers stay compressed


def error(status: int, message: str) -> web.Response:
    """An error as Triton words it (tritonclient reads ``error``)."""
    return web.Response(status=status, body=orjson.dumps({"error": message}),
                        content_type="application/json")


class TooSlow(Exception):
    pass


@dataclass(frozen=True)
class BodyPace:
    """How slowly a body may come: a client that holds its connection (and the bytes it
    declared, counted as held) while sending a byte now and then is answered 408."""

    idle_s: float = 10.0  # with no byte
    grace_s: float = 10.0  # after which the body must have come at min_bytes_per_s
    min_bytes_per_s: float = 64 * 1024

    def check(self, received: int, elapsed_s: float) -> None:
        if elapsed_s > self.grace_s and received < self.min_bytes_per_s * elapsed_s:
            raise TooSlow(f"{received} bytes in {elapsed_s:.0f} s, slower than "
                          f"{self.min_bytes_per_s / 1024:g} KiB/s")


def gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


class Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class HttpFront:
    def __init__(self, triton_http: str, max_body_bytes: int, max_held_bytes: int,
                 verdict: Path | None = None, max_abandoned: int = 8,
                 body_pace: BodyPace = BodyPace()) -> None:
        self.triton_http = triton_http
        self.body_pace = body_pace
        # The launcher's verdict (ensemble/stall.py): /v2/health/live is 503 while it finds a
        # stall or stops reporting, so that probes see a pipeline that completes nothing.
        self.verdict = verdict
        self.max_body_bytes = max_body_bytes
        # Request bodies held at once (read, checked, being forwarded): past this a request
        # is refused with 503 before its body is read on.
        self.held = HeldBytes(max_held_bytes)
        # Inference requests passed on to Triton and not answered yet, with their client's
        # request: one whose connection closed is abandoned (counted, never cancelled).
        self.inflight: dict[asyncio.Future, web.Request] = {}
        self.abandoned = Abandoned(max_abandoned)
        self.specs = ModelSpecs(triton_http)
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False,
            # Only the client's own headers: Triton compresses an answer only when asked.
            skip_auto_headers=("Accept-Encoding", "Accept", "User-Agent", "Content-Type"))

    async def _close(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()
        await self.specs.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if GENERATE.match(path):
            return error(404, f"{path}: the generate extension is not offered; use "
                              "/v2/models/<model>/infer")
        if path == LIVE and self.verdict is not None:
            liveness = read_verdict(self.verdict)
            if liveness.fault is not None:
                return error(503, liveness.fault)
            if liveness.restarting:
                return web.json_response({"live": True, "restarting": True})
        held = [0]
        try:
            body = await self.read(request, held)
            return await self.checked(request, path, body)
        except Refused as refused:
            return refused.response
        finally:
            self.held.give(held[0])

    def hold(self, held: list[int], size: int) -> None:
        """Count ``size`` bytes of this request's body as held (``held[0]`` so far)."""
        if size <= held[0]:
            return
        try:
            self.held.take(size - held[0])
        except ServerFull as full:
            raise Refused(error(503, f"request body: {full}")) from full
        held[0] = size

    async def read(self, request: web.Request, held: list[int]) -> bytearray:
        """The body, decompressed, within the size limit and the bytes held at once."""
        declared = request.content_length
        too_large = Refused(error(413, f"request body: larger than the limit of "
                                       f"{self.max_body_bytes} bytes"))
        if declared is not None and declared > self.max_body_bytes:
            raise too_large
        self.hold(held, declared or 0)  # refused before reading when it cannot be held
        body = bytearray()
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            while chunk := await asyncio.wait_for(request.content.readany(),
                                                  self.body_pace.idle_s):
                body.extend(chunk)
                if len(body) > self.max_body_bytes:
                    raise too_large
                self.hold(held, len(body))
                self.body_pace.check(len(body), loop.time() - start)
        except TimeoutError as err:
            raise Refused(error(408, f"request body: no byte for {self.body_pace.idle_s:g} "
                                     "s")) from err
        except TooSlow as err:
            raise Refused(error(408, f"request body: {err}")) from err
        except (aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError,
                ValueError) as err:
            raise Refused(error(400, f"request body: unreadable ({err})")) from err
        return body

    async def checked(self, request: web.Request, path: str, body: bytearray) -> web.Response:
        infer = INFER.match(path) if request.method == "POST" else None
        try:
            if infer:
                await self.check(unquote(infer["model"]), unquote(infer["version"] or ""),
                                 request, body)
                if not await self.admitted(request):
                    return error(499, "the client went away before its request was sent on")
            elif path.startswith(REPOSITORY):
                self.specs.forget()  # a load or unload may change what a model takes
        except UnknownModel as fault:
            return error(404, str(fault))
        except RequestFault as fault:
            return error(400, str(fault))
        except (TritonUnavailable, ServerFull) as err:
            return error(503, str(err))
        return await self.forward(request, body, infer is not None)

    def sweep(self) -> None:
        """Requests in Triton whose clients' connections closed become abandoned."""
        for call, request in list(self.inflight.items()):
            if gone(request):
                del self.inflight[call]
                self.abandoned.track(call)

    async def admitted(self, request: web.Request) -> bool:
        """Waits while too many abandoned requests run in Triton; False if this client went
        away meanwhile (its request is then never sent on)."""
        self.sweep()

        def check() -> bool:
            self.sweep()
            return gone(request)

        return await self.abandoned.admitted(check)

    async def check(self, model: str, version: str, request: web.Request,
                    body: bytearray) -> None:
        spec = await self.specs.get(model)
        if spec is None:
            raise UnknownModel(f"model '{model}': no such model is loaded")
        spec.check_version(version)
        header_length = parse_header_length(request.headers.get(HEADER_LENGTH), len(body))
        view = memoryview(body)
        header = view if header_length is None else view[:header_length]
        try:
            parsed = orjson.loads(header)
        except orjson.JSONDecodeError as err:
            raise RequestFault(f"request body: not valid JSON ({err})") from err
        check_http(spec, parsed, view[len(header):])

    async def forward(self, request: web.Request, body: bytearray,
                      infer: bool = False) -> web.Response:
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED}
        url = f"http://{self.triton_http}{request.rel_url}"

        async def call() -> tuple[int, list[tuple[str, str]], bytes]:
            async with self.session.request(request.method, url, data=body or None,
                                            headers=headers) as upstream:
                return (upstream.status, list(upstream.headers.items()),
                        await upstream.read())

        # Run to the end even if this client goes away: Triton is never cancelled mid-request.
        task = asyncio.ensure_future(call())
        if infer:
            self.inflight[task] = request
            task.add_done_callback(lambda done: self.inflight.pop(done, None))
        try:
            status, back, payload = await asyncio.shield(task)
        except (TimeoutError, aiohttp.ClientError) as err:
            return error(503, f"Triton did not answer: {err}")
        if infer and status in (400, 404) and b"unknown model" in payload:
            # The front found the model loaded a moment ago: it is being reloaded.
            self.specs.forget()
            return error(503, "not available right now (being loaded again): "
                              + payload.decode("utf-8", "replace")[:300])
        return web.Response(status=status, body=payload,
                            headers={k: v for k, v in back if k.lower() not in DROPPED_BACK})

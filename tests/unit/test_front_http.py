"""The HTTP front's own logic against a stand-in for Triton's loopback HTTP (an aiohttp app
that serves one model's config and records what reaches it): what is refused never reaches
it, what passes arrives byte for byte with the client's headers, and the size and held-bytes
limits answer 413 and 503."""

from __future__ import annotations

import asyncio
import gzip
import json

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf.json_format import MessageToDict

from ensemble.front.http_front import BodyPace, HttpFront
from export import registry as r
from export.repository import ensemble_config

T0 = 1_700_000_000
VALID = {"inputs": [
    {"name": r.TEXT, "datatype": "BYTES", "shape": [1, 1], "data": ["hello"]},
    {"name": r.TIMESTAMP, "datatype": "INT64", "shape": [1, 1], "data": [T0]}]}


def stand_in(seen: list, delay_s: float = 0.0) -> web.Application:
    config = MessageToDict(ensemble_config(r.ENSEMBLE_MODEL), preserving_proto_field_name=True)

    async def model_config(request: web.Request) -> web.Response:
        if request.match_info["model"] != r.ENSEMBLE_MODEL:
            return web.json_response({"error": "unknown model"}, status=400)
        return web.json_response(config)

    async def anything(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.method, request.path, dict(request.headers), body))
        await asyncio.sleep(delay_s)
        return web.json_response({"outputs": []}, headers={"X-From": "triton"})

    async def model_metadata(request: web.Request) -> web.Response:
        if request.match_info["model"] != r.ENSEMBLE_MODEL:
            return web.json_response({"error": "unknown model"}, status=400)
        return web.json_response({"name": r.ENSEMBLE_MODEL, "versions": ["1"]})

    app = web.Application(client_max_size=2**30)
    app.router.add_get("/v2/models/{model}/config", model_config)
    app.router.add_get("/v2/models/{model}", model_metadata)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def run(scenario, max_body: int = 1 << 20, max_held: int = 4 << 20, delay_s: float = 0.0,
        verdict=None, max_abandoned: int = 8, body_pace: BodyPace | None = None):
    """``scenario(client, seen)`` against a front whose upstream is the stand-in."""
    async def main():
        seen: list = []
        async with TestServer(stand_in(seen, delay_s)) as triton:
            front = HttpFront(f"{triton.host}:{triton.port}", max_body, max_held, verdict,
                              max_abandoned, body_pace or BodyPace())
            async with TestClient(TestServer(front.app())) as client:
                return await scenario(client, seen)

    return asyncio.run(main())


def test_a_valid_request_arrives_unchanged_with_its_headers():
    body = json.dumps(VALID).encode()

    async def scenario(client, seen):
        response = await client.post(f"/v2/models/{r.ENSEMBLE_MODEL}/infer", data=body,
                                     headers={"traceparent": "00-ab-cd-01", "X-Key": "k"})
        assert response.status == 200 and response.headers["X-From"] == "triton"
        method, path, headers, got = seen[-1]
        assert (method, path, got) == ("POST", f"/v2/models/{r.ENSEMBLE_MODEL}/infer", body)
        assert headers["traceparent"] == "00-ab-cd-01" and headers["X-Key"] == "k"

    run(scenario)


def test_the_issues_request_never_reaches_triton():
    bad = json.loads(json.dumps(VALID))
    bad["inputs"][1].update(shape=[2**40, 1], data=[1, 2, 3])

    async def scenario(client, seen):
        response = await client.post(f"/v2/models/{r.ENSEMBLE_MODEL}/infer", json=bad)
        text = await response.text()
        assert response.status == 400 and "TIMESTAMP" in json.loads(text)["error"]
        assert not seen

    run(scenario)


def test_a_compressed_body_is_inflated_and_checked():
    bad = json.loads(json.dumps(VALID))
    bad["inputs"][0]["shape"] = [1, 2]

    async def scenario(client, seen):
        for body, status in ((VALID, 200), (bad, 400)):
            response = await client.post(
                f"/v2/models/{r.ENSEMBLE_MODEL}/infer",
                data=gzip.compress(json.dumps(body).encode()),
                headers={"Content-Encoding": "gzip"})
            assert response.status == status, await response.text()
        assert len(seen) == 1 and seen[0][3] == json.dumps(VALID).encode()
        assert "Content-Encoding" not in seen[0][2]

    run(scenario)


def test_a_body_over_the_limit_is_413_even_when_it_inflates_past_it():
    async def scenario(client, seen):
        response = await client.post(f"/v2/models/{r.ENSEMBLE_MODEL}/infer",
                                     data=b" " * (2 << 20))
        assert response.status == 413
        response = await client.post(f"/v2/models/{r.ENSEMBLE_MODEL}/infer",
                                     data=gzip.compress(b" " * (8 << 20)),
                                     headers={"Content-Encoding": "gzip"})
        assert response.status == 413 and "limit" in await response.text()
        assert not seen

    run(scenario)


def test_bodies_held_at_once_are_bounded():
    body = json.dumps(VALID).encode() + b" " * (600 << 10)  # valid JSON, 600 KiB

    async def scenario(client, seen):
        async def post():
            response = await client.post(f"/v2/models/{r.ENSEMBLE_MODEL}/infer", data=body)
            return response.status

        statuses = await asyncio.gather(*(post() for _ in range(6)))
        # 1 MiB may be held at once and the stand-in takes its time: one request at a time
        # is held, the others are refused with 503 (retry), none lost.
        assert min(statuses) == 200 and set(statuses) <= {200, 503}
        assert statuses.count(503) >= 4
        assert len(seen) == statuses.count(200)
        assert await post() == 200  # every byte given back

    run(scenario, max_held=1 << 20, delay_s=0.3)


def test_unknown_models_and_generate_are_answered_by_the_front():
    async def scenario(client, seen):
        response = await client.post("/v2/models/nope/infer", json=VALID)
        assert response.status == 404 and "nope" in await response.text()
        response = await client.post(f"/v2/models/{r.ENSEMBLE_MODEL}/generate",
                                     json={"TEXT": "x"})
        assert response.status == 404 and "generate" in await response.text()
        assert not seen
        response = await client.get("/v2/health/ready")
        assert response.status == 200 and seen[-1][1] == "/v2/health/ready"

    run(scenario)


def test_a_version_not_loaded_is_unknown_and_never_reaches_triton():
    async def scenario(client, seen):
        async def infer(version: str) -> tuple[int, str]:
            response = await client.post(
                f"/v2/models/{r.ENSEMBLE_MODEL}/versions/{version}/infer", json=VALID)
            return response.status, await response.text()

        for version in ("0", "2", "99", "18446744073709551617"):
            status, text = await infer(version)
            assert status == 404 and f"version {version}: not loaded (loaded: 1)" in text
        for version in ("-1", "x", "1.0", "%C2%B2"):  # '²' is a digit to str.isdigit
            status, text = await infer(version)
            assert status == 400 and "a version is an integer > 0" in text
        assert not seen
        assert (await infer("1"))[0] == 200
        assert seen[-1][1] == f"/v2/models/{r.ENSEMBLE_MODEL}/versions/1/infer"

    run(scenario)


def test_liveness_follows_the_launchers_verdict(tmp_path):
    from ensemble.stall import write_verdict

    verdict = tmp_path / "verdict.json"

    async def scenario(client, seen):
        async def live():
            response = await client.get("/v2/health/live")
            return response.status, await response.text()

        status, body = await live()
        assert status == 503 and "not reported" in body and not seen
        write_verdict(verdict, [])
        assert (await live())[0] == 200 and seen[-1][1] == "/v2/health/live"  # Triton's
        write_verdict(verdict, ["e08_graph"])
        status, body = await live()
        assert status == 503 and "e08_graph" in body
        write_verdict(verdict, [], restarting=True)
        status, body = await live()
        assert status == 200 and json.loads(body) == {"live": True, "restarting": True}
        assert len(seen) == 1  # answered by the front: Triton is being started again

    run(scenario, verdict=verdict)


def test_requests_whose_clients_went_away_are_bounded_while_triton_runs_them():
    async def scenario(client, seen):
        async def give_up() -> None:
            try:
                await client.post(f"/v2/models/{r.ENSEMBLE_MODEL}/infer", json=VALID,
                                  timeout=aiohttp.ClientTimeout(total=0.1))
                raise AssertionError("answered within 0.1 s")
            except TimeoutError:
                pass

        for _ in range(2):  # two clients that give up and close their connections
            await give_up()
        await asyncio.sleep(0.05)
        await give_up()  # waits in the front behind the two, gives up there
        assert len(seen) == 2  # ... and never reached Triton
        start = asyncio.get_running_loop().time()
        response = await client.post(f"/v2/models/{r.ENSEMBLE_MODEL}/infer", json=VALID)
        assert response.status == 200 and len(seen) == 3
        assert asyncio.get_running_loop().time() - start > 0.4  # it waited for one to end

    run(scenario, delay_s=0.8, max_abandoned=2)


def test_a_model_seen_loaded_and_missing_now_is_unavailable_not_unknown():
    from ensemble.front.specs import ModelSpecs, TritonUnavailable

    config = MessageToDict(ensemble_config(r.ENSEMBLE_MODEL), preserving_proto_field_name=True)
    loaded = {r.ENSEMBLE_MODEL: True}

    async def model_config(request: web.Request) -> web.Response:
        if loaded.get(request.match_info["model"]):
            return web.json_response(config)
        return web.json_response({"error": "Request for unknown model"}, status=400)

    async def model_metadata(request: web.Request) -> web.Response:
        if loaded.get(request.match_info["model"]):
            return web.json_response({"name": r.ENSEMBLE_MODEL, "versions": ["1"]})
        return web.json_response({"error": "Request for unknown model"}, status=400)

    async def main():
        app = web.Application()
        app.router.add_get("/v2/models/{model}/config", model_config)
        app.router.add_get("/v2/models/{model}", model_metadata)
        async with TestServer(app) as triton:
            specs = ModelSpecs(f"{triton.host}:{triton.port}", ttl_s=0.0)
            try:
                assert await specs.get("never_loaded") is None  # unknown: 404 / NOT_FOUND
                assert await specs.get(r.ENSEMBLE_MODEL) is not None
                loaded[r.ENSEMBLE_MODEL] = False  # the watchdog reloads one of its steps
                try:
                    await specs.get(r.ENSEMBLE_MODEL)
                    raise AssertionError("a model being reloaded was called unknown")
                except TritonUnavailable as err:
                    assert "loaded again" in str(err)
                loaded[r.ENSEMBLE_MODEL] = True
                assert await specs.get(r.ENSEMBLE_MODEL) is not None
            finally:
                await specs.close()

    asyncio.run(main())


def test_a_body_that_comes_too_slowly_or_stops_is_answered_408_and_its_bytes_given_back():
    pace = BodyPace(idle_s=0.5, grace_s=0.5, min_bytes_per_s=1000)

    async def scenario(client, seen):
        async def slow(gap_s: float, size: int = 100) -> bytes:
            reader, writer = await asyncio.open_connection(client.host, client.port)
            writer.write(f"POST /v2/models/{r.ENSEMBLE_MODEL}/infer HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Length: {size}\r\n\r\n".encode())
            for _ in range(size):
                if reader.at_eof() or writer.is_closing():
                    break
                writer.write(b"{")
                try:
                    return await asyncio.wait_for(reader.readline(), gap_s)
                except TimeoutError:
                    pass
            line = await asyncio.wait_for(reader.readline(), 3)
            writer.close()
            return line

        assert b" 408 " in await slow(0.1)  # a byte every 0.1 s: 10 bytes/s
        assert b" 408 " in await slow(3.0)  # one byte, then nothing
        assert not seen
        response = await client.post(f"/v2/models/{r.ENSEMBLE_MODEL}/infer", json=VALID)
        assert response.status == 200  # every held byte was given back

    run(scenario, max_held=200, body_pace=pace)

"""Triton behind the gateway: what it serves (read from its model configs), one asyncio gRPC
channel, lists split into requests of the ensemble's batch size sent concurrently, and
Triton's errors turned into HTTP statuses."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusedembed_client.client import (
    CACHED_MODEL,
    KINDS,
    MODEL,
    SPARSE_OUTPUTS,
    GateControls,
    image_tensors,
    infer_inputs,
    request_tensors,
)
from fusedembed_client.gateway.tracing import request_id

PREFIX = "fusedembed"
FUSED = "FUSED"
IMAGE_MODEL = "fused_image"  # images: FUSED, or E10 from the image (fusedembed-e10)
IMAGE_BLOCK = "E10"
TOKENS = "TOKENS"
FUSION_VERSION = "FUSION_VERSION"
# fused_text's input for a Matryoshka prefix; its config parameter "dimensions" lists the
# sizes the served checkpoint was trained for (the build writes it): `dimensions` may ask
# for any of them.
DIMENSIONS = "DIMENSIONS"
BLOCK = re.compile(r"E(\d+)")
COUNTS_KEPT = 65_536  # token counts remembered for the cached entry point (by text digest)


class GatewayError(Exception):
    """An answer other than vectors: HTTP ``status``, a message naming the field or model,
    the request field at fault (``param``) and a short ``kind`` for the error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind


@dataclass(frozen=True)
class Served:
    """One model name of /v1/models: which Triton model answers it and with which output."""

    id: str  # "fusedembed", "fusedembed-cached", "fusedembed-e11"
    triton_model: str
    output: str  # FUSED or a block (E1 ... E12)
    dim: int
    dimensions: tuple[int, ...]  # what `dimensions` may ask for (the full size at least)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": 0, "owned_by": PREFIX,
                "dimensions": self.dim, "supported_dimensions": list(self.dimensions)}


# Triton's tensor names -> the request fields they come from (for `param` of an error).
FIELDS = {"TEXT": "input", "TIMESTAMP": "timestamp", "KIND": "input_type",
          "TRUNCATE": "truncate", "TOP_K": "top_k", "TEMPERATURE": "temperature",
          "FOCUS": "focus", "PRESENCE": "missing", DIMENSIONS: "dimensions",
          "SPARSE_TOP_K": "sparse_top_k", "SESSION": "session", "SEQUENCE": "sequence",
          "IMAGE": "input"}


@dataclass(frozen=True)
class Catalog:
    """The served names, read from fused_text's config (and fused_text_cached's when loaded)."""

    models: dict[str, Served]
    batch: int  # the ensemble's max_batch_size
    steps: tuple[str, ...]  # the models the ensemble runs: named in a 424
    tokens: bool  # fused_text answers TOKENS
    usage_step: tuple[str, str] | None  # (tokenizer model, its output) behind TOKENS
    matryoshka: bool  # fused_text takes DIMENSIONS
    sparse: bool = False  # fused_text answers E6's SPLADE terms

    @classmethod
    def from_configs(cls, fused: dict[str, Any], cached: dict[str, Any] | None) -> Catalog:
        outputs = {o["name"]: int(o["dims"][-1]) for o in fused.get("output", [])}
        inputs = {i["name"] for i in fused.get("input", [])}
        trained = fused.get("parameters", {}).get("dimensions", {}).get("string_value", "")
        offered = {int(d) for d in trained.split(",") if d.strip()}
        # FUSED has a variable size where fused_text takes DIMENSIONS: the largest offered.
        full = outputs[FUSED] if outputs[FUSED] > 0 else max(offered)
        nested = (tuple(sorted(offered | {full}, reverse=True)) if DIMENSIONS in inputs
                  else (full,))
        matryoshka = len(nested) > 1
        models = {PREFIX: Served(PREFIX, fused["name"], FUSED, full, nested)}
        if cached is not None:
            name = f"{PREFIX}-cached"
            models[name] = Served(name, cached["name"], FUSED, full, (full,))
        for out, dim in sorted(outputs.items(), key=lambda o: _block_number(o[0])):
            if BLOCK.fullmatch(out):
                name = f"{PREFIX}-{out.lower()}"
                models[name] = Served(name, fused["name"], out, dim, (dim,))
        steps = fused.get("ensemble_scheduling", {}).get("step", [])
        usage = next(((s["model_name"], key) for s in steps
                      for key, value in s.get("output_map", {}).items() if value == TOKENS), None)
        return cls(models, int(fused.get("max_batch_size", 1)) or 1,
                   tuple(s["model_name"] for s in steps), TOKENS in outputs, usage, matryoshka,
                   all(o in outputs for o in SPARSE_OUTPUTS))

    def resolve(self, name: str, input_type: str | None) -> tuple[Served, str]:
        """The served model and the KIND a model name (with an optional ``-query`` /
        ``-passage`` suffix, as NIM names them) and ``input_type`` ask for."""
        base, kind = name, None
        for k in KINDS:
            if name.endswith(f"-{k}"):
                base, kind = name[: -len(k) - 1], k
        if base not in self.models:
            known = ", ".join(self.models)
            raise GatewayError(404, f"model: {name!r} is not served; models: {known} (each "
                               "also as <model>-query and <model>-passage)", "model",
                               "model_not_found")
        if input_type is not None and kind is not None and input_type != kind:
            raise GatewayError(422, f"input_type: {input_type!r} contradicts the model "
                               f"name's suffix -{kind}", "input_type")
        return self.models[base], input_type or kind or "passage"

    def step_in(self, message: str) -> str | None:
        """The ensemble step a server error names (its adapters prefix errors with it)."""
        for step in sorted(self.steps, key=len, reverse=True):
            if re.search(rf"\b{re.escape(step)}\b", message):
                return step
        return None


def _block_number(name: str) -> int:
    match = BLOCK.fullmatch(name)
    return int(match.group(1)) if match else 0


def triton_error(err: Exception, catalog: Catalog | None, first: int = 0) -> GatewayError:
    """Triton's answer as an HTTP status: its validation errors 422 (field named), a full
    queue 429, unreachable or not ready 503, past the deadline 504, a failed embedder 424
    with the model named; anything else 500. ``first``: the request's index of the chunk's
    first item."""
    status = str(getattr(err, "status", lambda: "")() or "")
    message = str(getattr(err, "message", lambda: str(err))() or err)
    text = re.sub(r"^in ensemble '[^']*', ", "", message)
    if status.endswith("INVALID_ARGUMENT"):
        # "TEXT[3]: ..." of the chunk from item 32 speaks of the request's "input[35]: ..."
        tensor = re.match(r"([A-Z_]+)(?:\[(\d+)\])?(?=[\[:])", text)
        field = FIELDS.get(tensor.group(1)) if tensor else None
        if field is not None:
            index = f"[{int(tensor.group(2)) + first}]" if tensor.group(2) else ""
            text = field + index + text[tensor.end():]  # type: ignore[union-attr]
        return GatewayError(422, text, field)
    if status.endswith("DEADLINE_EXCEEDED"):
        return GatewayError(504, f"no answer from Triton within the deadline: {text}",
                            kind="timeout")
    if status.endswith(("UNAVAILABLE", "RESOURCE_EXHAUSTED")):
        if "queue" in text.lower():
            return GatewayError(429, f"Triton's queue is full: {text}", kind="overloaded")
        return GatewayError(503, f"Triton is unavailable: {text}", kind="unavailable")
    if status.endswith("NOT_FOUND") or "unknown model" in text.lower():
        return GatewayError(503, f"Triton does not serve it (yet): {text}", kind="unavailable")
    step = catalog.step_in(text) if catalog else None
    if step is not None:
        return GatewayError(424, f"model {step} failed: {text}", kind="model_error")
    return GatewayError(500, f"Triton failed: {text}", kind="server_error")


@dataclass(frozen=True)
class Batch:
    """What one /v1/embeddings or /embed request asks of Triton."""

    texts: Sequence[str]
    timestamps: Sequence[int]
    kind: str = "passage"
    truncate: bool = True
    gate: GateControls = field(default_factory=GateControls)
    dimensions: int | None = None
    sessions: Sequence[str] | None = None  # E4's SESSION and SEQUENCE, one per text
    sequences: Sequence[int] | None = None
    images: Sequence[bytes] | None = None  # encoded images instead of the texts

    def rows(self, rows: range) -> dict[str, Any]:
        """``request_tensors``' per-text arguments for ``rows``."""
        def pick(values: Sequence[Any] | None) -> list[Any] | None:
            return None if values is None else [values[i] for i in rows]

        return {"texts": pick(self.texts), "timestamps": pick(self.timestamps),
                "sessions": pick(self.sessions), "sequences": pick(self.sequences)}


MAX_ABANDONED = 8


class Triton:
    """The asyncio gRPC client (one channel) and the catalog read from the server."""

    def __init__(self, url: str, concurrency: int, timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.grpc import aio

        self.url = url
        self.timeout_s = timeout_s
        self._tc = grpcclient
        self._client = aio.InferenceServerClient(url)
        self._slots = asyncio.Semaphore(concurrency)
        self._catalog: Catalog | None = None
        self._counts: OrderedDict[bytes, int] = OrderedDict()
        self._calls: set[asyncio.Future] = set()  # inference calls under way
        # Calls answered 504 and still running in Triton (never cancelled): past
        # MAX_ABANDONED, new requests get 503 until some end, so that the work nobody waits
        # for stays bounded.
        self._abandoned: set[asyncio.Future] = set()

    async def close(self) -> None:
        """Close the channel once the calls under way have ended (at most ``timeout_s``):
        closing it earlier would cancel them in Triton."""
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=self.timeout_s)
        await self._client.close()

    async def catalog(self) -> Catalog:
        """Read once, when Triton first answers (503 until then)."""
        if self._catalog is None:
            try:
                fused = await self._config(MODEL)
                try:
                    cached = await self._config(CACHED_MODEL)
                except Exception:  # noqa: BLE001 - the cached entry point is optional
                    cached = None
            except Exception as err:
                raise triton_error(err, None) from err
            self._catalog = Catalog.from_configs(fused, cached)
        return self._catalog

    async def _config(self, name: str) -> dict[str, Any]:
        response = await self._client.get_model_config(name, as_json=True,
                                                       client_timeout=self.timeout_s)
        return response["config"]

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready(client_timeout=5)
                        and await self._client.is_model_ready(MODEL, client_timeout=5))
        except Exception:  # noqa: BLE001 - unreachable counts as not ready
            return False

    async def embed(self, served: Served, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Vectors [n, dim] (float32) and token counts [n] of every text, in order."""
        catalog = await self.catalog()
        if batch.dimensions is not None and batch.dimensions not in served.dimensions:
            supported = ", ".join(map(str, served.dimensions))
            raise GatewayError(422, f"dimensions: model {served.id} returns {supported} "
                               f"dimensions, not {batch.dimensions}", "dimensions")
        parts = await self._chunked(catalog, batch, lambda rows, deadline: self._chunk(
            catalog, served, batch, rows, deadline))
        vectors = np.concatenate([p[0] for p in parts])
        tokens = np.concatenate([p[1] for p in parts])
        return vectors, tokens

    async def images(self, served: Served, batch: Batch) -> np.ndarray:
        """fused_image's vectors [n, dim] (FUSED, or E10 for fusedembed-e10) of every image."""
        catalog = await self.catalog()
        if served.triton_model != MODEL or served.output not in (FUSED, IMAGE_BLOCK):
            raise GatewayError(422, f"model: {served.id} embeds text only; images are embedded "
                               f"by {PREFIX} and {PREFIX}-{IMAGE_BLOCK.lower()}", "model")
        if batch.dimensions is not None and batch.dimensions != served.dim:
            raise GatewayError(422, f"dimensions: model {served.id} returns {served.dim} "
                               f"dimensions for an image, not {batch.dimensions}", "dimensions")
        assert batch.images is not None

        async def chunk(rows: range, deadline: float) -> np.ndarray:
            args = batch.rows(rows)
            tensors = image_tensors([batch.images[i] for i in rows], args["timestamps"],
                                    args["sessions"], args["sequences"])
            async with self._slots:
                result = await self._infer(IMAGE_MODEL, tensors, [served.output], deadline,
                                           rows.start)
            return result.as_numpy(served.output).astype(np.float32, copy=False)

        return np.concatenate(await self._chunked(catalog, batch, chunk))

    async def sparse(self, batch: Batch, top_k: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """E6's SPLADE terms of every text, in order: (indices, weights) without padding."""
        catalog = await self.catalog()
        if not catalog.sparse:
            raise GatewayError(404, f"{MODEL} at {self.url} does not answer SPLADE terms "
                               f"({', '.join(SPARSE_OUTPUTS)})", kind="model_not_found")

        async def chunk(rows: range, deadline: float) -> list[tuple[np.ndarray, np.ndarray]]:
            tensors = request_tensors(kind=batch.kind, truncate=batch.truncate,
                                      gate=batch.gate, sparse_top_k=top_k, **batch.rows(rows))
            async with self._slots:  # the terms alone: FuseMoE and the other blocks idle
                result = await self._infer(MODEL, tensors, list(SPARSE_OUTPUTS), deadline,
                                           rows.start)
            indices, weights = (result.as_numpy(o) for o in SPARSE_OUTPUTS)
            return [(i[i >= 0], w[i >= 0]) for i, w in zip(indices, weights)]

        return [row for part in await self._chunked(catalog, batch, chunk) for row in part]

    async def _chunked(self, catalog: Catalog, batch: Batch, run: Any) -> list[Any]:
        """``run(rows, deadline)`` on each slice of the ensemble's batch size, concurrently;
        their answers in order, or 504 past the timeout."""
        n = len(batch.texts)
        chunks = [range(i, min(n, i + catalog.batch)) for i in range(0, n, catalog.batch)]
        deadline = time.monotonic() + self.timeout_s
        try:
            return await asyncio.wait_for(asyncio.gather(*(run(c, deadline) for c in chunks)),
                                          self.timeout_s)
        except TimeoutError as err:
            raise GatewayError(504, f"no answer within {self.timeout_s:g} s "
                               "(FUSEDEMBED_GATEWAY_TIMEOUT_S)", kind="timeout") from err

    async def _chunk(self, catalog: Catalog, served: Served, batch: Batch, rows: range,
                     deadline: float) -> tuple[np.ndarray, np.ndarray]:
        tensors = request_tensors(kind=batch.kind, truncate=batch.truncate, gate=batch.gate,
                                  **batch.rows(rows))
        if batch.dimensions is not None and batch.dimensions != served.dim:
            tensors.append((DIMENSIONS, "INT32",
                            np.full((len(rows), 1), batch.dimensions, dtype=np.int32)))
        wanted = [served.output]
        if served.triton_model == MODEL and catalog.tokens:
            wanted.append(TOKENS)
        async with self._slots:
            work = self._infer(served.triton_model, tensors, wanted, deadline, rows.start)
            if TOKENS in wanted:
                result = await work
                counts = result.as_numpy(TOKENS).reshape(-1)
            else:
                result, counts = await asyncio.gather(work, self._counted(
                    catalog, [batch.texts[i] for i in rows], deadline))
        vectors = result.as_numpy(served.output).astype(np.float32, copy=False)
        return vectors, np.asarray(counts, dtype=np.int64)

    async def _counted(self, catalog: Catalog, texts: list[str], deadline: float) -> list[int]:
        """Token counts for an entry point without TOKENS (the cached one answers FUSED
        only): from the tokenizer behind TOKENS, remembered per text, since that entry point
        is for texts that come again."""
        keys = [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts]
        new = [i for i, k in enumerate(keys) if k not in self._counts]
        if new and catalog.usage_step is not None:
            model, output = catalog.usage_step
            text = np.array([[texts[i].encode("utf-8")] for i in new], dtype=np.object_)
            result = await self._infer(model, [("TEXT", "BYTES", text)], [output], deadline)
            for i, n in zip(new, result.as_numpy(output).reshape(-1)):
                self._counts[keys[i]] = int(n)
                if len(self._counts) > COUNTS_KEPT:
                    self._counts.popitem(last=False)
        for k in keys:
            if k in self._counts:
                self._counts.move_to_end(k)
        return [self._counts.get(k, 0) for k in keys]

    async def _infer(self, model: str, tensors: list[tuple[str, str, np.ndarray]],
                     outputs: list[str], deadline: float, first: int = 0) -> Any:
        tc = self._tc
        if len(self._abandoned) >= MAX_ABANDONED:
            raise GatewayError(503, f"{len(self._abandoned)} requests past their deadline are "
                               "still running in Triton; retry later", kind="unavailable")
        inputs = infer_inputs(tc, tensors)
        # No gRPC deadline, and no cancellation: Triton 2.51 can crash or stall a model's
        # queue when a gRPC request is cancelled while an ensemble runs it (fixed in 2.53,
        # triton-inference-server/server#7840). The call runs to its end as a task of its
        # own; past the deadline the gateway answers 504 and drops the answer.
        call = asyncio.ensure_future(self._client.infer(
            model, inputs, outputs=[tc.InferRequestedOutput(o) for o in outputs],
            request_id=request_id()))
        self._calls.add(call)
        call.add_done_callback(self._finished)
        try:
            return await asyncio.wait_for(asyncio.shield(call),
                                          max(0.001, deadline - time.monotonic()))
        except asyncio.CancelledError:  # the whole request's deadline passed
            if not call.done():
                self._abandoned.add(call)
            raise
        except TimeoutError as err:
            if not call.done():
                self._abandoned.add(call)
            raise GatewayError(504, f"no answer within {self.timeout_s:g} s "
                               "(FUSEDEMBED_GATEWAY_TIMEOUT_S)", kind="timeout") from err
        except GatewayError:
            raise
        except Exception as err:
            raise triton_error(err, self._catalog, first) from err

    def _finished(self, call: asyncio.Future) -> None:
        self._calls.discard(call)
        self._abandoned.discard(call)
        if not call.cancelled():
            call.exception()  # retrieved: an answer dropped after a 504 is not an error

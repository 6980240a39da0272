"""A small typed wrapper over ``tritonclient`` (HTTP or gRPC) for the ``fused_text`` ensemble."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "fused_text"
# The same pipeline behind Triton's response cache; it answers FUSED only (a repeated
# request never reaches the embedders), so the Embedding's other fields stay empty.
CACHED_MODEL = "fused_text_cached"
# The same pipeline degrading instead of failing: a block whose embedder fails or is late is
# left out (Embedding.missing names it). It answers the full float vector and the gate's
# outputs; no blocks, terms, token vectors or token count.
FAILSAFE_MODEL = "fused_text_failsafe"
FAILSAFE_OUTPUTS = ("FUSED", "EXPERT_WEIGHTS", "SELECTED_EXPERTS", "TRUNCATED", "REDACTIONS",
                    "FUSION_VERSION", "MISSING")
# One encoded image (PNG, JPEG, WebP, GIF, BMP) and its time -> FUSED, E10 from the image.
IMAGE_MODEL = "fused_image"
IMAGE_OUTPUTS = ("FUSED", "EXPERT_WEIGHTS", "SELECTED_EXPERTS", "FUSION_VERSION", "E10")
MAX_BATCH = 32  # the ensemble's max_batch_size; larger batches are sent in chunks
DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}
OUTPUTS = ("FUSED", "EXPERT_WEIGHTS", "SELECTED_EXPERTS", "TRUNCATED", "REDACTIONS",
           "FUSION_VERSION", "TOKENS")
# E6's SPLADE terms (asked for with sparse=True): ids padded with -1, weights with 0. Asked
# alone, they cost only the steps that make them (preprocess, E6's tokenizer, E6).
SPARSE_OUTPUTS = ("E6_SPARSE_INDICES", "E6_SPARSE_WEIGHTS")
# E12's ColBERT token vectors (asked for with token_vectors=True): [n, 128] padded with zero
# vectors to the request's longest row, and each row's count.
TOKEN_OUTPUTS = ("E12_TOKENS", "E12_TOKEN_COUNT")
# FUSED's encodings (ENCODING) and the outputs that carry each: the vector first.
ENCODED_OUTPUTS = {"float": ("FUSED",), "int8": ("FUSED_INT8", "FUSED_SCALE"),
                   "binary": ("FUSED_BINARY",)}
IDS, TERMS = "IDS", "TERMS"  # a tokenizer model reads ids back as its vocabulary's entries
REDACTION_TYPES = ("EMAIL", "PHONE", "SSN", "CARD", "API_KEY", "BEARER_TOKEN", "IP")
BLOCKS = tuple(f"E{i}" for i in range(1, 13))
KINDS = ("query", "passage")


# Answers that mean "busy, try again later": the server's queue was full or its request
# waited past the queue's timeout (Triton's UNAVAILABLE; HTTP 503, or 429 from a proxy).
RETRYABLE = frozenset({"503", "429", "StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED"})


class FusedEmbedError(RuntimeError):
    """The server refused a request or could not be reached.

    ``status`` is the transport's status ("400", "StatusCode.INVALID_ARGUMENT", ...; empty when
    none came back); ``retryable`` says whether the refusal was back-pressure.
    """

    def __init__(self, message: str, status: str = "") -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE


@dataclass(frozen=True)
class Retry:
    """Back-off for refusals under load: ``attempts`` tries in all, sleeping ``first_s``
    doubled after each refusal (at most ``max_s``, with jitter), and never past ``deadline_s``
    from the first try. Client errors (4xx, INVALID_ARGUMENT) and faults are never retried."""

    attempts: int = 6
    first_s: float = 0.1
    max_s: float = 2.0
    deadline_s: float = 30.0

    def delays(self) -> list[float]:
        return [min(self.max_s, self.first_s * 2 ** i) for i in range(self.attempts - 1)]



@dataclass(frozen=True)
class SparseTerms:
    """E6's SPLADE vector as its non-zero terms: vocabulary ids (ascending) and weights."""

    indices: np.ndarray  # [n] int32
    weights: np.ndarray  # [n] float32, > 0

    def dense(self, vocabulary_size: int) -> np.ndarray:
        """The vocabulary-sized vector these terms come from."""
        out = np.zeros(vocabulary_size, dtype=np.float32)
        out[self.indices] = self.weights
        return out

    def dot(self, other: SparseTerms) -> float:
        """SPLADE's score between two texts: the dot product over their shared terms."""
        _, mine, theirs = np.intersect1d(self.indices, other.indices, assume_unique=True,
                                         return_indices=True)
        return float(np.dot(self.weights[mine], other.weights[theirs]))


def decode_int8(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """FUSED_INT8 codes back to floats: code x the checkpoint's per-dimension scale
    (FUSED_SCALE, the same for every vector of one checkpoint and size)."""
    return np.asarray(codes, np.float32) * np.asarray(scale, np.float32)


def decode_binary(bits: np.ndarray, dimensions: int) -> np.ndarray:
    """FUSED_BINARY (signs packed 8 per byte, first dimension in the high bit) as a +-1
    float vector of ``dimensions``."""
    signs = np.unpackbits(np.asarray(bits, np.uint8), axis=-1)[..., :dimensions]
    return np.where(signs == 1, 1.0, -1.0).astype(np.float32)


def int8_similarity(a: np.ndarray, b: np.ndarray, scale: np.ndarray | None = None,
                    ) -> np.ndarray:
    """Dot products of int8 codes along the last axis: products in int32, each dimension
    weighted by FUSED_SCALE squared when given (the dot product of the decoded vectors);
    without ``scale`` the plain integer dot product, which over-weights the dimensions of
    small scale."""
    products = np.asarray(a, np.int32) * np.asarray(b, np.int32)
    if scale is None:
        return products.sum(-1)
    return products @ np.square(np.asarray(scale, np.float64))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance of packed binary vectors along the last axis; for d dimensions,
    d - 2 x hamming is the dot product of their +-1 vectors."""
    bits = np.unpackbits(np.bitwise_xor(np.asarray(a, np.uint8), np.asarray(b, np.uint8)),
                         axis=-1)
    return bits.sum(-1, dtype=np.int64)  # signed: d - 2 x hamming goes below 0


def maxsim(query: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray:
    """ColBERT's late-interaction score of a query against each document: over the query's
    token vectors [q, d], the sum of each one's largest dot product with a document's token
    vectors [n, d] (``Embedding.token_vectors``). A document without vectors scores 0."""
    scores = np.zeros(len(documents), dtype=np.float32)
    for i, doc in enumerate(documents):
        if len(doc):
            scores[i] = (np.asarray(query, np.float32) @ np.asarray(doc, np.float32).T
                         ).max(axis=1).sum()
    return scores


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray  # [1536] float32, unit norm
    expert_weights: np.ndarray  # [8] gate probabilities (sum 1)
    selected_experts: np.ndarray  # [k] indices of the experts used, by descending weight
    truncated: tuple[str, ...] = ()  # blocks whose model saw the text cut to its token limit
    redactions: dict[str, int] = field(default_factory=dict)  # PII replaced, per type
    blocks: dict[str, np.ndarray] = field(default_factory=dict)  # E1 ... E12 when asked
    fusion_version: str = ""  # the FuseMoE checkpoint that produced the vector
    tokens: int = 0  # the text's WordPiece tokens (E1's tokenizer, specials included, uncut)
    sparse: SparseTerms | None = None  # E6's SPLADE terms when asked for
    token_vectors: np.ndarray | None = None  # [n, 128] E12's ColBERT vectors when asked for
    # encoding "int8" or "binary": the codes as served (int8 [d], or uint8 [d / 8] of packed
    # signs) and, for int8, the scale; ``vector`` is then their decoding, normalised.
    encoding: str = "float"
    codes: np.ndarray | None = None
    scale: np.ndarray | None = None
    missing: tuple[str, ...] = ()  # fused_text_failsafe: blocks left out (failed or late)

    def to_dict(self) -> dict[str, Any]:
        out = {"dim": int(self.vector.shape[0]), "vector": self.vector.tolist(),
               "fusion_version": self.fusion_version, "tokens": self.tokens,
               "expert_weights": self.expert_weights.tolist(),
               "selected_experts": self.selected_experts.tolist(),
               "truncated": list(self.truncated), "redactions": self.redactions}
        if self.blocks:
            out["blocks"] = {k: v.tolist() for k, v in self.blocks.items()}
        if self.sparse is not None:
            out["sparse"] = {"indices": self.sparse.indices.tolist(),
                             "weights": self.sparse.weights.tolist()}
        if self.token_vectors is not None:
            out["token_vectors"] = self.token_vectors.tolist()
        if self.codes is not None:
            out["encoding"] = self.encoding
            out["codes"] = self.codes.tolist()
        if self.scale is not None:
            out["scale"] = self.scale.tolist()
        if self.missing:
            out["missing"] = list(self.missing)
        return out


@dataclass(frozen=True)
class GateControls:
    """Optional FuseMoE steering; None (and no missing blocks) keeps the server's defaults.

    ``top_k``: experts mixed, 1..8 (server default 2); ``temperature``: gate softmax
    temperature, 0.05..20 (default 1); ``focus``: multipliers >= 0 of blocks before gating,
    by block id ({"E11": 2.0}; unnamed blocks keep 1); ``missing``: blocks to leave out.
    """

    top_k: int | None = None
    temperature: float | None = None
    focus: dict[str, float] | None = None
    missing: tuple[str, ...] = ()

    def tensors(self) -> dict[str, tuple[str, np.ndarray]]:
        """The optional inputs to send, as (Triton dtype, one row)."""
        for name in [*(self.focus or {}), *self.missing]:
            if name not in BLOCKS:
                raise ValueError(f"unknown block {name!r}; blocks are E1 ... E12")
        out: dict[str, tuple[str, np.ndarray]] = {}
        if self.top_k is not None:
            out["TOP_K"] = ("INT32", np.array([self.top_k], dtype=np.int32))
        if self.temperature is not None:
            out["TEMPERATURE"] = ("FP32", np.array([self.temperature], dtype=np.float32))
        if self.focus:
            out["FOCUS"] = ("FP32", np.array([self.focus.get(b, 1.0) for b in BLOCKS],
                                             dtype=np.float32))
        if self.missing:
            out["PRESENCE"] = ("BOOL", np.array([b not in self.missing for b in BLOCKS]))
        return out


def request_tensors(texts: Sequence[str], timestamps: Sequence[int], kind: str = "passage",
                    truncate: bool = True, gate: GateControls | None = None,
                    sparse_top_k: int | None = None, sessions: Sequence[str] | None = None,
                    sequences: Sequence[int] | None = None, dimensions: int | None = None,
                    encoding: str = "float") -> list[tuple[str, str, np.ndarray]]:
    """The inputs of one fused_text request as (name, Triton dtype, array); optional inputs
    only where they differ from the server's defaults (``sessions`` and ``sequences``: one
    per text, E4's SESSION and SEQUENCE; ``dimensions`` and ``encoding``: FUSED's size and
    encoding)."""
    tensors = [("TEXT", "BYTES", np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)),
               ("TIMESTAMP", "INT64", np.array([[int(s)] for s in timestamps], dtype=np.int64))]
    if kind != "passage":  # the server's default
        tensors.append(("KIND", "BYTES", np.array([[kind.encode()]] * len(texts),
                                                  dtype=np.object_)))
    if not truncate:  # the server's default is to truncate
        tensors.append(("TRUNCATE", "BOOL", np.zeros((len(texts), 1), dtype=bool)))
    for name, (dtype, row) in (gate or GateControls()).tensors().items():
        tensors.append((name, dtype, np.tile(row, (len(texts), 1))))
    if sparse_top_k is not None:
        tensors.append(("SPARSE_TOP_K", "INT32",
                        np.full((len(texts), 1), sparse_top_k, dtype=np.int32)))
    if dimensions is not None:
        tensors.append(("DIMENSIONS", "INT32", np.full((len(texts), 1), dimensions, np.int32)))
    if encoding != "float":
        tensors.append(("ENCODING", "BYTES", np.array([[encoding.encode()]] * len(texts),
                                                      dtype=np.object_)))
    return tensors + session_tensors(sessions, sequences)


def infer_inputs(tc: Any, tensors: list[tuple[str, str, np.ndarray]]) -> list[Any]:
    """(name, Triton dtype, array) tensors as ``tc``'s (tritonclient.http or .grpc)
    InferInputs."""
    inputs = []
    for name, dtype, value in tensors:
        inputs.append(tc.InferInput(name, list(value.shape), dtype))
        inputs[-1].set_data_from_numpy(value)
    return inputs


def _per_item(n: int, items: str, **values: Any) -> dict[str, list[Any] | None]:
    """Per-item arguments of ``n`` items, given as one value per item, or (a string, such
    as one session) one value for every item; None where absent (timestamps: now)."""
    out: dict[str, list[Any] | None] = {}
    for name, value in values.items():
        if value is None and name == "timestamps":
            value = [int(time.time())] * n
        if isinstance(value, str):
            value = [value] * n
        if value is not None and len(value) != n:
            raise ValueError(f"{n} {items} but {len(value)} {name}")
        out[name] = None if value is None else list(value)
    return out


def session_tensors(sessions: Sequence[str] | None, sequences: Sequence[int] | None,
                    ) -> list[tuple[str, str, np.ndarray]]:
    """E4's optional SESSION and SEQUENCE inputs (one per item), where given."""
    tensors = []
    if sessions is not None:
        tensors.append(("SESSION", "BYTES", np.array([[s.encode("utf-8")] for s in sessions],
                                                     dtype=np.object_).reshape(-1, 1)))
    if sequences is not None:
        tensors.append(("SEQUENCE", "INT64",
                        np.array([[int(n)] for n in sequences], dtype=np.int64).reshape(-1, 1)))
    return tensors


def image_tensors(images: Sequence[bytes], timestamps: Sequence[int],
                  sessions: Sequence[str] | None = None, sequences: Sequence[int] | None = None,
                  ) -> list[tuple[str, str, np.ndarray]]:
    """The inputs of one fused_image request as (name, Triton dtype, array)."""
    tensors = [("IMAGE", "BYTES", np.array(list(images), dtype=np.object_).reshape(-1, 1)),
               ("TIMESTAMP", "INT64", np.array([[int(s)] for s in timestamps], dtype=np.int64))]
    return tensors + session_tensors(sessions, sequences)


@dataclass(frozen=True)
class ModelInfo:
    """What the server says about one model of the pipeline (from its config parameters)."""

    name: str
    weights: str  # "pretrained" | "tiny" | "full" | "custom" | "seeded" | "trained" | "unknown"
    source: str
    block: str = ""  # E1 ... E12 for an embedder
    precision: str = ""  # "fp32" | "fp16" | "int8" | "fp8" for the models built with one


class FusedEmbedClient:
    def __init__(self, url: str | None = None, protocol: str = "http", model: str = MODEL,
                 timeout_s: float = 120.0, retry: Retry = Retry()) -> None:
        if protocol not in DEFAULT_URLS:
            raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
        self.protocol = protocol
        self.url = url or DEFAULT_URLS[protocol]
        self.model = model
        self.timeout_s = timeout_s
        self.retry = retry
        self.retries = 0  # refusals retried so far (back-pressure seen by this client)
        if protocol == "http":
            import tritonclient.http as tc

            self._client = tc.InferenceServerClient(self.url, network_timeout=timeout_s,
                                                    connection_timeout=timeout_s)
        else:
            import tritonclient.grpc as tc  # type: ignore[no-redef]

            self._client = tc.InferenceServerClient(self.url)
        self._tc = tc

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> FusedEmbedClient:  # noqa: PYI034 - typing.Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ready(self) -> bool:
        try:
            return bool(self._client.is_model_ready(self.model))
        except Exception:  # noqa: BLE001 - unreachable counts as not ready
            return False

    def embed(self, text: str, timestamp: int | None = None, kind: str = "passage",
              blocks: Sequence[str] = (), truncate: bool = True,
              gate: GateControls | None = None, sparse: bool = False,
              sparse_top_k: int | None = None, token_vectors: bool = False,
              session: str | None = None, sequence: int | None = None,
              dimensions: int | None = None, encoding: str = "float") -> Embedding:
        return self.embed_batch([text], None if timestamp is None else [timestamp], kind,
                                blocks, truncate, gate, sparse, sparse_top_k, token_vectors,
                                session, None if sequence is None else [sequence],
                                dimensions, encoding)[0]

    def embed_batch(self, texts: Sequence[str], timestamps: Sequence[int] | None = None,
                    kind: str = "passage", blocks: Sequence[str] = (),
                    truncate: bool = True, gate: GateControls | None = None,
                    sparse: bool = False, sparse_top_k: int | None = None,
                    token_vectors: bool = False, sessions: str | Sequence[str] | None = None,
                    sequences: Sequence[int] | None = None, dimensions: int | None = None,
                    encoding: str = "float") -> list[Embedding]:
        """Embed many texts; sent in requests of at most 32 items.

        ``kind`` is "passage" (default) or "query" (E1 and E12 encode them differently);
        ``blocks`` names embedder blocks (``"E11"``, ...) to return besides FUSED;
        ``truncate=False`` makes a text over any model's token limit an error;
        ``gate`` steers FuseMoE for every text of the call (server defaults otherwise);
        ``sparse`` returns E6's SPLADE terms (``Embedding.sparse``), only the
        ``sparse_top_k`` heaviest of each text when given (:meth:`terms` reads them);
        ``token_vectors`` returns E12's ColBERT token vectors (``Embedding.token_vectors``,
        scored with :func:`maxsim`);
        ``sessions`` (one for every text, or one per text) and ``sequences`` (one per text)
        are E4's session and position (server defaults: the shared session "", the
        timestamp as the position);
        ``dimensions`` asks for a Matryoshka prefix of FUSED (one of the sizes the served
        checkpoint offers) and ``encoding`` for "int8" or "binary" codes
        (``Embedding.codes``; :func:`decode_int8`, :func:`decode_binary`).
        """
        given = _per_item(len(texts), "texts", timestamps=timestamps, sessions=sessions,
                          sequences=sequences)
        timestamps, sessions, sequences = given["timestamps"], given["sessions"], given["sequences"]
        if kind not in KINDS:
            raise ValueError(f"kind must be 'query' or 'passage', not {kind!r}")
        unknown = [b for b in blocks if b not in BLOCKS]
        if unknown:
            raise ValueError(f"unknown block {unknown[0]!r}; blocks are E1 ... E12")
        if (blocks or sparse or token_vectors) and self.model == CACHED_MODEL:
            raise ValueError(f"{CACHED_MODEL} answers FUSED only; ask {MODEL} for blocks, "
                             "sparse terms and token vectors")
        if sparse_top_k is not None and not sparse:
            raise ValueError("sparse_top_k needs sparse=True")
        if encoding not in ENCODED_OUTPUTS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODED_OUTPUTS)}, "
                             f"not {encoding!r}")
        if (dimensions is not None or encoding != "float") and self.model == CACHED_MODEL:
            raise ValueError(f"{CACHED_MODEL} answers the full float vector only; ask "
                             f"{MODEL} for dimensions and encodings")
        if self.model == FAILSAFE_MODEL and (blocks or sparse or token_vectors
                                             or dimensions is not None or encoding != "float"):
            raise ValueError(f"{FAILSAFE_MODEL} answers the full float vector only; ask "
                             f"{MODEL} for blocks, sparse terms, token vectors, dimensions "
                             "and encodings")
        gate = gate or GateControls()
        out: list[Embedding] = []
        for start in range(0, len(texts), MAX_BATCH):
            part = slice(start, start + MAX_BATCH)
            out += self._infer(texts[part], timestamps[part], kind, tuple(blocks), truncate,
                               gate, sparse, sparse_top_k, token_vectors,
                               None if sessions is None else sessions[part],
                               None if sequences is None else sequences[part],
                               dimensions, encoding)
        return out

    def embed_image(self, image: bytes | str | os.PathLike, timestamp: int | None = None,
                    session: str | None = None, sequence: int | None = None) -> Embedding:
        return self.embed_images([image], None if timestamp is None else [timestamp],
                                 session, None if sequence is None else [sequence])[0]

    def embed_images(self, images: Sequence[bytes | str | os.PathLike],
                     timestamps: Sequence[int] | None = None,
                     sessions: str | Sequence[str] | None = None,
                     sequences: Sequence[int] | None = None) -> list[Embedding]:
        """Embed encoded images (bytes, or paths to read) with ``fused_image``: E10 from the
        image (``Embedding.blocks["E10"]``), the time blocks from its timestamp, the text
        blocks missing. Sent in requests of at most 32 images."""
        data = [bytes(i) if isinstance(i, (bytes, bytearray, memoryview))
                else Path(i).read_bytes() for i in images]
        given = _per_item(len(data), "images", timestamps=timestamps, sessions=sessions,
                          sequences=sequences)
        timestamps, sessions, sequences = given["timestamps"], given["sessions"], given["sequences"]
        out: list[Embedding] = []
        for start in range(0, len(data), MAX_BATCH):
            part = slice(start, start + MAX_BATCH)
            tensors = image_tensors(data[part], timestamps[part],
                                    None if sessions is None else sessions[part],
                                    None if sequences is None else sequences[part])
            result = self._send(IMAGE_MODEL, tensors, IMAGE_OUTPUTS)
            fused, weights, selected, version, e10 = (result.as_numpy(n) for n in IMAGE_OUTPUTS)
            out += [Embedding(fused[i], weights[i], selected[i][selected[i] >= 0],
                              blocks={"E10": e10[i]}, fusion_version=version[i][0].decode())
                    for i in range(len(fused))]
        return out

    def terms(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        """The vocabulary entries behind SPLADE indices, read from the tokenizer that the
        server runs for E6 (-1, padding, gives "")."""
        ids = np.asarray(indices, dtype=np.int32).reshape(1, -1)
        if ids.size == 0:
            return []
        tc = self._tc
        try:
            result = self._client.infer(self._sparse_tokenizer(),
                                        infer_inputs(tc, [(IDS, "INT32", ids)]),
                                        outputs=[tc.InferRequestedOutput(TERMS)])
        except FusedEmbedError:
            raise  # the ensemble has no E6 terms
        except Exception as err:
            raise FusedEmbedError(f"{self.url}: {err}",
                                  str(getattr(err, "status", lambda: None)() or "")) from err
        return [t.decode("utf-8") for t in result.as_numpy(TERMS).reshape(-1)]

    def _sparse_tokenizer(self) -> str:
        """The tokenizer model feeding E6 in the served ensemble (from its config)."""
        for step in self._config(MODEL)["ensemble_scheduling"]["step"]:
            outputs = step.get("output_map", {})
            if SPARSE_OUTPUTS[0] in outputs.values():
                source = step.get("input_map", {}).get("input_ids", "")
                return source.split(".", 1)[0]
        raise FusedEmbedError(f"{MODEL} at {self.url} has no {SPARSE_OUTPUTS[0]} output")

    def models(self) -> list[ModelInfo]:
        """Every model the ensemble runs, with the weights each serves (pretrained or not)."""
        try:
            steps = self._config(self.model)["ensemble_scheduling"]["step"]
            infos = []
            for step in steps:
                params = self._config(step["model_name"]).get("parameters", {})
                def param(key: str, default: str = "", p: dict = params) -> str:
                    return p.get(key, {}).get("string_value", default)

                infos.append(ModelInfo(step["model_name"], param("weights", "unknown"),
                                       param("source"), param("block_id"), param("precision")))
            return infos
        except Exception as err:
            raise FusedEmbedError(f"{self.model} at {self.url}: {err}") from err

    def _config(self, name: str) -> dict[str, Any]:
        if self.protocol == "http":
            return self._client.get_model_config(name)
        return self._client.get_model_config(name, as_json=True)["config"]

    def _send(self, model: str, tensors: list[tuple[str, str, np.ndarray]],
              outputs: Sequence[str]) -> Any:
        """One inference of ``model``, retried with back-off while the server says it is
        busy."""
        tc = self._tc
        inputs = infer_inputs(tc, tensors)
        kwargs: dict[str, Any] = {"outputs": [tc.InferRequestedOutput(o) for o in outputs]}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        start = time.monotonic()
        delays = iter(self.retry.delays())
        while True:
            try:
                return self._client.infer(model, inputs, **kwargs)
            except Exception as err:  # tritonclient raises InferenceServerException
                status = getattr(err, "status", lambda: None)() or ""
                error = FusedEmbedError(
                    f"{model} at {self.url} ({self.protocol}): {err}", str(status))
                delay = next(delays, None) if error.retryable else None
                if delay is None:
                    raise error from err
                delay *= random.uniform(0.5, 1.0)
                if time.monotonic() - start + delay > self.retry.deadline_s:
                    raise error from err
                self.retries += 1
                time.sleep(delay)

    def _infer(self, texts: Sequence[str], timestamps: Sequence[int], kind: str,
               blocks: tuple[str, ...], truncate: bool, gate: GateControls,
               sparse: bool = False, sparse_top_k: int | None = None,
               token_vectors: bool = False, sessions: Sequence[str] | None = None,
               sequences: Sequence[int] | None = None, dimensions: int | None = None,
               encoding: str = "float") -> list[Embedding]:
        vector_outputs = ENCODED_OUTPUTS[encoding]
        names = (("FUSED",) if self.model == CACHED_MODEL
                 else FAILSAFE_OUTPUTS if self.model == FAILSAFE_MODEL
                 else (*vector_outputs, *OUTPUTS[1:], *blocks,
                       *(SPARSE_OUTPUTS if sparse else ()),
                       *(TOKEN_OUTPUTS if token_vectors else ())))
        result = self._send(self.model, request_tensors(
            texts, timestamps, kind, truncate, gate, sparse_top_k, sessions, sequences,
            dimensions, encoding), names)
        if self.model == CACHED_MODEL:
            empty = np.zeros(0, dtype=np.float32)
            return [Embedding(v, empty, empty.astype(np.int32)) for v in result.as_numpy("FUSED")]
        if self.model == FAILSAFE_MODEL:
            fused, weights, selected, cut, redacted, version, left_out = (
                result.as_numpy(name) for name in FAILSAFE_OUTPUTS)
            return [Embedding(fused[i], weights[i], selected[i][selected[i] >= 0],
                              tuple(b for b, c in zip(BLOCKS, cut[i]) if c),
                              {t: int(n) for t, n in zip(REDACTION_TYPES, redacted[i]) if n},
                              fusion_version=version[i][0].decode("utf-8"),
                              missing=tuple(b for b, m in zip(BLOCKS, left_out[i]) if m))
                    for i in range(len(texts))]
        weights, selected, cut, redacted, version, tokens = (result.as_numpy(name)
                                                             for name in OUTPUTS[1:])
        codes = result.as_numpy(vector_outputs[0])
        scale = result.as_numpy(vector_outputs[1]) if encoding == "int8" else None
        fused = (codes if encoding == "float"
                 else decode_int8(codes, scale) if encoding == "int8"
                 else decode_binary(codes, 8 * codes.shape[1]))
        if encoding != "float":
            fused = fused / np.maximum(np.linalg.norm(fused, axis=1, keepdims=True), 1e-12)
        block_arrays = {b: result.as_numpy(b) for b in blocks}
        terms: list[SparseTerms | None] = [None] * len(texts)
        if sparse:
            indices, values = (result.as_numpy(name) for name in SPARSE_OUTPUTS)
            terms = [SparseTerms(row[row >= 0], w[row >= 0]) for row, w in zip(indices, values)]
        colbert: list[np.ndarray | None] = [None] * len(texts)
        if token_vectors:
            padded, counts = (result.as_numpy(name) for name in TOKEN_OUTPUTS)
            colbert = [v[:int(n[0])] for v, n in zip(padded, counts)]
        return [Embedding(fused[i], weights[i], selected[i][selected[i] >= 0],
                          tuple(b for b, c in zip(BLOCKS, cut[i]) if c),
                          {t: int(n) for t, n in zip(REDACTION_TYPES, redacted[i]) if n},
                          {b: a[i] for b, a in block_arrays.items()},
                          version[i][0].decode("utf-8"), int(tokens[i][0]), terms[i],
                          colbert[i], encoding,
                          None if encoding == "float" else codes[i],
                          None if scale is None else scale[i])
                for i in range(len(texts))]

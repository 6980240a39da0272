"""A small typed wrapper over ``tritonclient`` (HTTP or gRPC) for the ``fused_text`` ensemble."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MODEL = "fused_text"
MAX_BATCH = 32  # the ensemble's max_batch_size; larger batches are sent in chunks
DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}
OUTPUTS = ("FUSED", "EXPERT_WEIGHTS", "SELECTED_EXPERTS")


class FusedEmbedError(RuntimeError):
    """The server refused a request or could not be reached."""


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray  # [1536] float32, unit norm
    expert_weights: np.ndarray  # [8] gate probabilities (sum 1)
    selected_experts: np.ndarray  # [k] indices of the experts used, by descending weight

    def to_dict(self) -> dict[str, Any]:
        return {"dim": int(self.vector.shape[0]), "vector": self.vector.tolist(),
                "expert_weights": self.expert_weights.tolist(),
                "selected_experts": self.selected_experts.tolist()}


class FusedEmbedClient:
    def __init__(self, url: str | None = None, protocol: str = "http", model: str = MODEL,
                 timeout_s: float = 120.0) -> None:
        if protocol not in DEFAULT_URLS:
            raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
        self.protocol = protocol
        self.url = url or DEFAULT_URLS[protocol]
        self.model = model
        self.timeout_s = timeout_s
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

    def embed(self, text: str, timestamp: int | None = None) -> Embedding:
        return self.embed_batch([text], None if timestamp is None else [timestamp])[0]

    def embed_batch(self, texts: Sequence[str],
                    timestamps: Sequence[int] | None = None) -> list[Embedding]:
        """Embed many texts; sent in requests of at most 32 items."""
        if timestamps is None:
            timestamps = [int(time.time())] * len(texts)
        if len(timestamps) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(timestamps)} timestamps")
        out: list[Embedding] = []
        for start in range(0, len(texts), MAX_BATCH):
            out += self._infer(texts[start:start + MAX_BATCH],
                               timestamps[start:start + MAX_BATCH])
        return out

    def _infer(self, texts: Sequence[str], timestamps: Sequence[int]) -> list[Embedding]:
        tc = self._tc
        text = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
        stamp = np.array([[int(s)] for s in timestamps], dtype=np.int64)
        inputs = [tc.InferInput("TEXT", list(text.shape), "BYTES"),
                  tc.InferInput("TIMESTAMP", list(stamp.shape), "INT64")]
        inputs[0].set_data_from_numpy(text)
        inputs[1].set_data_from_numpy(stamp)
        outputs = [tc.InferRequestedOutput(name) for name in OUTPUTS]
        kwargs: dict[str, Any] = {"outputs": outputs}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        try:
            result = self._client.infer(self.model, inputs, **kwargs)
        except Exception as err:  # tritonclient raises InferenceServerException
            raise FusedEmbedError(f"{self.model} at {self.url} ({self.protocol}): {err}") from err
        fused, weights, selected = (result.as_numpy(name) for name in OUTPUTS)
        return [Embedding(fused[i], weights[i], selected[i]) for i in range(len(texts))]

"""FuseMoE model: the twelve blocks of many requests fused in one batched forward.

Optional per-item gate controls (TEMPERATURE, TOP_K, FOCUS, PRESENCE) are validated here;
a bad value answers its own request with an error and the rest of the batch is fused.
FUSION_VERSION names the checkpoint (its manifest version) that produced each answer.
"""

from __future__ import annotations

import numpy as np
import torch

from ensemble import fusemoe
from ensemble.serving.base import (
    Adapter,
    RequestError,
    input_array,
    optional_array,
    split_rows,
)
from ensemble.validation import GateControls, InvalidInput, Validator
from export.registry import (
    BLOCK_SUFFIX,
    EMBEDDERS,
    EXPERT_WEIGHTS,
    FOCUS,
    FUSED,
    FUSION_VERSION,
    PRESENCE,
    SELECTED_EXPERTS,
    TEMPERATURE,
    TOP_K,
    TRUNCATED,
    TRUNCATED_SUFFIX,
    Input,
    Runtime,
    block_offsets,
)

OFFSETS = [block_offsets()[e.id] for e in EMBEDDERS]


class TritonPythonModel(Adapter):
    def setup(self) -> None:
        threads = Runtime.from_parameters(self.params).threads
        if threads:
            torch.set_num_threads(threads)
        precision = self.params.get("precision", "fp32")
        self.model, self.manifest = fusemoe.load(self.directory, precision=precision)
        self.validator = Validator()

    def execute(self, requests):
        return self.run_batched(requests, self._read, self._fuse)

    def _read(self, request) -> tuple[np.ndarray, np.ndarray, GateControls]:
        blocks = np.concatenate([input_array(request, e.block_name) for e in EMBEDDERS], axis=1)
        cut = np.zeros((blocks.shape[0], len(EMBEDDERS)), dtype=bool)
        for j, e in enumerate(EMBEDDERS):
            if e.input is Input.TOKENS:
                cut[:, j] = input_array(request, e.block_name + TRUNCATED_SUFFIX).reshape(-1)
        try:
            controls = self.validator.controls(
                blocks.shape[0], optional_array(request, TOP_K), optional_array(request, TEMPERATURE),
                optional_array(request, FOCUS), optional_array(request, PRESENCE))
        except InvalidInput as err:
            raise RequestError(str(err)) from err
        return blocks, cut, controls

    def _fuse(self, items: list[tuple[np.ndarray, np.ndarray, GateControls]],
              ) -> list[dict[str, np.ndarray]]:
        per_request = [blocks for blocks, _, _ in items]
        x = torch.from_numpy(np.concatenate(per_request).astype(np.float32, copy=False))
        out = fusemoe.fuse(self.model, x, GateControls.concat([c for _, _, c in items]))
        counts = [len(p) for p in per_request]
        version = self.manifest.version.encode("utf-8")
        results = []
        for f, w, s, (blocks, cut, controls) in zip(split_rows(out.fused.numpy(), counts),
                                                    split_rows(out.expert_weights.numpy(), counts),
                                                    split_rows(out.selected_experts.numpy(), counts),
                                                    items):
            result = {FUSED: f, EXPERT_WEIGHTS: w, SELECTED_EXPERTS: s[:, :controls.top_k.max()],
                      TRUNCATED: cut,
                      FUSION_VERSION: np.full((len(f), 1), version, dtype=np.object_)}
            for e, (start, end) in zip(EMBEDDERS, OFFSETS):
                result[e.block_name + BLOCK_SUFFIX] = blocks[:, start:end]
            results.append(result)  # the base adapter sends only the requested outputs
        return results

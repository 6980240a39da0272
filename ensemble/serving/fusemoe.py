"""FuseMoE model: the twelve blocks of many requests fused in one batched forward."""

from __future__ import annotations

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from ensemble import fusemoe
from ensemble.serving.base import Adapter, input_array, split_rows
from export.registry import (
    BLOCK_SUFFIX,
    EMBEDDERS,
    EXPERT_WEIGHTS,
    FUSED,
    PRESENCE,
    SELECTED_EXPERTS,
    TRUNCATED,
    TRUNCATED_SUFFIX,
    Input,
    block_offsets,
)

OFFSETS = [block_offsets()[e.id] for e in EMBEDDERS]


class TritonPythonModel(Adapter):
    def setup(self) -> None:
        threads = int(self.params.get("threads", "0"))
        if threads:
            torch.set_num_threads(threads)
        self.model, self.manifest = fusemoe.load(self.directory)

    def execute(self, requests):
        return self.run_batched(requests, self._read, self._fuse)

    @staticmethod
    def _read(request) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        blocks = np.concatenate([input_array(request, e.block_name) for e in EMBEDDERS], axis=1)
        cut = np.zeros((blocks.shape[0], len(EMBEDDERS)), dtype=bool)
        for j, e in enumerate(EMBEDDERS):
            if e.input is Input.TOKENS:
                cut[:, j] = input_array(request, e.block_name + TRUNCATED_SUFFIX).reshape(-1)
        presence = pb_utils.get_input_tensor_by_name(request, PRESENCE)
        present = (np.ones((blocks.shape[0], len(EMBEDDERS)), dtype=np.float32)
                   if presence is None else presence.as_numpy().astype(np.float32))
        return blocks, cut, present

    def _fuse(self, items: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
              ) -> list[dict[str, np.ndarray]]:
        per_request = [blocks for blocks, _, _ in items]
        x = torch.from_numpy(np.concatenate(per_request).astype(np.float32, copy=False))
        present = torch.from_numpy(np.concatenate([p for _, _, p in items]))
        with torch.inference_mode():
            out = self.model(x, present)
        counts = [len(p) for p in per_request]
        results = []
        for f, w, s, (blocks, cut, _) in zip(split_rows(out.fused.numpy(), counts),
                                          split_rows(out.expert_weights.numpy(), counts),
                                          split_rows(out.selected_experts.numpy(), counts),
                                          items):
            result = {FUSED: f, EXPERT_WEIGHTS: w, SELECTED_EXPERTS: s, TRUNCATED: cut}
            for e, (start, end) in zip(EMBEDDERS, OFFSETS):
                result[e.block_name + BLOCK_SUFFIX] = blocks[:, start:end]
            results.append(result)  # the base adapter sends only the requested outputs
        return results

"""FuseMoE model: the twelve blocks of many requests fused in one batched forward.

Optional per-item gate controls (TEMPERATURE, TOP_K, FOCUS, PRESENCE) are validated here,
with FROM_IMAGE (fused_image's rows: E10 from the image tower, mapped by the checkpoint);
a bad value answers its own request with an error and the rest of the batch is fused.
FUSION_VERSION names the checkpoint (its manifest version) that produced each answer.
DIMENSIONS and ENCODING (per request) give FUSED as a Matryoshka prefix and in int8 or
binary (ensemble/encodings.py) from the checkpoint's manifest.
"""

from __future__ import annotations

import numpy as np
import torch

from ensemble import encodings, fusemoe
from ensemble.serving.base import (
    Adapter,
    RequestError,
    input_array,
    optional_array,
    split_rows,
)
from ensemble.serving.metrics import (
    EXPERT_SELECTIONS,
    FUSION_VERSION_INFO,
    TRUNCATIONS,
    LabelledCounter,
    VersionInfo,
)
from ensemble.stages import torch_device
from ensemble.validation import GateControls, InvalidInput, Validator
from export.registry import (
    BLOCK_SUFFIX,
    DIMENSIONS,
    EMBEDDERS,
    ENCODING,
    EXPERT_WEIGHTS,
    FOCUS,
    FROM_IMAGE,
    FUSED,
    FUSED_BINARY,
    FUSED_INT8,
    FUSED_SCALE,
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
        self.outputs = fusemoe.Outputs.of(self.manifest)
        self.device, notes = torch_device(self.placement, torch.cuda.is_available())
        self.model.to(self.device)
        self.log_placement(f"torch {self.device}", notes)
        self.validator = Validator()
        self.truncations = LabelledCounter(
            TRUNCATIONS, "Texts a token embedder cut to its token limit (TRUNCATE true)",
            "block", [e.id for e in EMBEDDERS if e.input is Input.TOKENS])
        self.selections = LabelledCounter(
            EXPERT_SELECTIONS, "Items routed to each FuseMoE expert (top-k per item)", "expert",
            [str(i) for i in range(self.model.cfg.num_experts)])
        # Kept: a family that is garbage-collected leaves the metrics page.
        self.version_info = VersionInfo(FUSION_VERSION_INFO,
                                        "1 for the FuseMoE checkpoint being served",
                                        self.manifest.version)

    def execute(self, requests):
        return self.run_batched(requests, self._read, self._fuse)

    def _read(self, request) -> tuple[np.ndarray, np.ndarray, GateControls, tuple[int, str]]:
        blocks = np.concatenate([input_array(request, e.block_name) for e in EMBEDDERS], axis=1)
        cut = np.zeros((blocks.shape[0], len(EMBEDDERS)), dtype=bool)
        for j, e in enumerate(EMBEDDERS):
            if e.input is Input.TOKENS:
                cut[:, j] = input_array(request, e.block_name + TRUNCATED_SUFFIX).reshape(-1)
        try:
            controls = self.validator.controls(
                blocks.shape[0], optional_array(request, TOP_K), optional_array(request, TEMPERATURE),
                optional_array(request, FOCUS), optional_array(request, PRESENCE),
                optional_array(request, FROM_IMAGE))
            settings = self.validator.output_settings(
                blocks.shape[0], optional_array(request, DIMENSIONS),
                optional_array(request, ENCODING), self.outputs.dimensions,
                tuple(self.outputs.int8_scale))
        except InvalidInput as err:
            raise RequestError(str(err)) from err
        return blocks, cut, controls, settings

    def _fuse(self, items: list[tuple[np.ndarray, np.ndarray, GateControls, tuple[int, str]]],
              ) -> list[dict[str, np.ndarray]]:
        per_request = [blocks for blocks, _, _, _ in items]
        x = torch.from_numpy(np.concatenate(per_request).astype(np.float32, copy=False))
        out = fusemoe.fuse(self.model, x.to(self.device),
                           GateControls.concat([c for _, _, c, _ in items])).to("cpu")
        counts = [len(p) for p in per_request]
        version = self.manifest.version.encode("utf-8")
        results = []
        for f, w, s, (blocks, cut, controls, settings) in zip(split_rows(out.fused.numpy(), counts),
                                                    split_rows(out.expert_weights.numpy(), counts),
                                                    split_rows(out.selected_experts.numpy(), counts),
                                                    items):
            result = self._encoded(f, *settings) | {
                      EXPERT_WEIGHTS: w, SELECTED_EXPERTS: s[:, :controls.top_k.max()],
                      TRUNCATED: cut,
                      FUSION_VERSION: np.full((len(f), 1), version, dtype=np.object_)}
            for e, (start, end) in zip(EMBEDDERS, OFFSETS):
                result[e.block_name + BLOCK_SUFFIX] = blocks[:, start:end]
            results.append(result)  # the base adapter sends only the requested outputs
            self._count(cut, s, controls)
        return results

    def _encoded(self, fused: np.ndarray, d: int, encoding: str) -> dict[str, np.ndarray]:
        """FUSED, FUSED_INT8, FUSED_BINARY and FUSED_SCALE of one request: its encoding's
        output holds the vector, the others have no columns."""
        rows = len(fused)
        vector = fused if d == fused.shape[1] else encodings.prefix(fused, d)
        out = {FUSED: np.zeros((rows, 0), np.float32), FUSED_INT8: np.zeros((rows, 0), np.int8),
               FUSED_BINARY: np.zeros((rows, 0), np.uint8),
               FUSED_SCALE: np.zeros((rows, 0), np.float32)}
        if encoding == "int8":
            scale = self.outputs.int8_scale[d]
            out[FUSED_INT8] = encodings.int8(vector, scale)
            out[FUSED_SCALE] = np.broadcast_to(scale, (rows, d))
        elif encoding == "binary":
            out[FUSED_BINARY] = encodings.binary(vector)
        else:
            out[FUSED] = vector
        return out

    def _count(self, cut: np.ndarray, selected: np.ndarray, controls: GateControls) -> None:
        for j, e in enumerate(EMBEDDERS):
            if e.input is Input.TOKENS:
                self.truncations.add(e.id, int(cut[:, j].sum()))
        kept = np.arange(selected.shape[1])[None, :] < controls.top_k.reshape(-1, 1)
        experts, counts = np.unique(selected[kept], return_counts=True)
        for expert, count in zip(experts, counts):
            self.selections.add(str(int(expert)), int(count))

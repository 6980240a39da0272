"""The whole pipeline in one process, without Triton: the reference the server must match.

It runs the same stages as the served models (tokenizers, ONNX/PyTorch embedders, custom
encoders, FuseMoE) one after another over a batch of requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ensemble import fusemoe
from ensemble.stages import CustomEmbedder, FamilyTokenizer, TokenEmbedder, version_dir
from export.registry import (
    EMBEDDERS,
    FUSEMOE_MODEL,
    TOKENIZER_FAMILIES,
    Input,
    Kind,
    tokenizer_family,
)


@dataclass(frozen=True)
class PipelineOutput:
    fused: np.ndarray  # [B, 1536]
    expert_weights: np.ndarray  # [B, 8]
    selected_experts: np.ndarray  # [B, k] int32
    blocks: dict[str, np.ndarray]  # E1 ... E12, each [B, dim]


class Pipeline:
    def __init__(self, repository: Path) -> None:
        self.tokenizers = {f.name: FamilyTokenizer(version_dir(repository, f.triton_model), f)
                           for f in TOKENIZER_FAMILIES}
        self.embedders: dict[str, TokenEmbedder | CustomEmbedder] = {}
        for spec in EMBEDDERS:
            directory = version_dir(repository, spec.triton_model)
            self.embedders[spec.id] = (TokenEmbedder(spec, directory)
                                       if spec.input is Input.TOKENS
                                       else CustomEmbedder(spec, directory))
        self.fusemoe, self.manifest = fusemoe.load(version_dir(repository, FUSEMOE_MODEL))

    def blocks(self, texts: list[str], timestamps: np.ndarray,
               kinds: list[Kind] | None = None) -> dict[str, np.ndarray]:
        tokens = {name: tok.encode(texts) for name, tok in self.tokenizers.items()}
        out: dict[str, np.ndarray] = {}
        for spec in EMBEDDERS:
            stage = self.embedders[spec.id]
            if isinstance(stage, TokenEmbedder):
                family = tokenizer_family(spec.tokenizer or "").name
                out[spec.id] = stage.embed(tokens[family], kinds)
            elif spec.input is Input.TEXT:
                out[spec.id] = stage.embed_texts(texts)
            else:
                out[spec.id] = stage.embed_times(timestamps)
        return out

    def embed(self, texts: list[str], timestamps: np.ndarray,
              kinds: list[Kind] | None = None) -> PipelineOutput:
        blocks = self.blocks(texts, np.asarray(timestamps, dtype=np.int64).reshape(-1), kinds)
        x = torch.from_numpy(np.concatenate([blocks[e.id] for e in EMBEDDERS], axis=1))
        with torch.inference_mode():
            fused = self.fusemoe(x)
        return PipelineOutput(fused.fused.numpy(), fused.expert_weights.numpy(),
                              fused.selected_experts.numpy(), blocks)

"""The whole pipeline in one process, without Triton: the reference the server must match.

It runs the same stages as the served models (tokenizers, ONNX/PyTorch embedders, custom
encoders, FuseMoE) one after another over a batch of requests.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ensemble import fusemoe
from ensemble.pii import TYPES as PII_TYPES
from ensemble.pii import scrub_texts
from ensemble.stages import (
    CustomEmbedder,
    FamilyTokenizer,
    ImageEmbedder,
    TokenEmbedder,
    version_dir,
)
from ensemble.validation import GateControls, Validator
from export.registry import (
    EMBEDDERS,
    FUSEMOE_MODEL,
    IMAGE_BLOCKS,
    IMAGE_EMBEDDER_MODEL,
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
    truncated: np.ndarray  # [B, 12] bool: which blocks saw a truncated text
    redactions: np.ndarray  # [B, 7] int32: PII redactions per type


def concat_blocks(blocks: dict[str, np.ndarray]) -> np.ndarray:
    """E1 ... E12 side by side: FuseMoE's [B, 8320] input."""
    return np.concatenate([blocks[e.id] for e in EMBEDDERS], axis=1)


class Pipeline:
    def __init__(self, repository: Path, validator: Validator | None = None) -> None:
        self.validator = validator or Validator()
        self.tokenizers = {f.name: FamilyTokenizer(version_dir(repository, f.triton_model), f)
                           for f in TOKENIZER_FAMILIES}
        self.embedders: dict[str, TokenEmbedder | CustomEmbedder] = {}
        for spec in EMBEDDERS:
            directory = version_dir(repository, spec.triton_model)
            self.embedders[spec.id] = (TokenEmbedder(spec, directory)
                                       if spec.input is Input.TOKENS
                                       else CustomEmbedder(spec, directory))
        self.fusemoe, self.manifest = fusemoe.load(version_dir(repository, FUSEMOE_MODEL))
        self.repository = repository
        self._images: ImageEmbedder | None = None

    def blocks(self, texts: list[str], timestamps: np.ndarray, kinds: list[Kind] | None = None,
               sessions: list[str] | None = None, positions: np.ndarray | None = None,
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every block for already validated texts, and the [B, 12] truncation flags (E4:
        ``sessions`` and ``positions``, by default the default session and the timestamps)."""
        tokens = {name: tok.encode(texts) for name, tok in self.tokenizers.items()}
        out: dict[str, np.ndarray] = {}
        cut = np.zeros((len(texts), len(EMBEDDERS)), dtype=bool)
        for j, spec in enumerate(EMBEDDERS):
            stage = self.embedders[spec.id]
            if isinstance(stage, TokenEmbedder):
                family = tokenizer_family(spec.tokenizer or "").name
                out[spec.id], cut[:, j] = stage.embed_with_flags(tokens[family], kinds)
            elif spec.input is Input.TEXT:
                out[spec.id] = stage.embed_texts(texts)
            elif spec.id == "E4":
                out[spec.id] = stage.embed_times(
                    timestamps if positions is None else positions, sessions)
            else:
                out[spec.id] = stage.embed_times(timestamps)
        return out, cut

    def encode(self, texts: list[str], timestamps: np.ndarray, kinds: list[Kind] | None = None,
               sessions: list[str] | None = None, sequences: np.ndarray | None = None,
               ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Validation, PII scrubbing and the twelve blocks: (blocks, truncated, redactions).
        ``sessions`` and ``sequences`` are the optional SESSION and SEQUENCE inputs."""
        raw = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
        texts = self.validator.texts(raw)
        stamps = self.validator.timestamps(np.asarray(timestamps))
        session_ids = self.validator.sessions(
            len(texts), None if sessions is None else np.array(sessions, dtype=np.object_))
        positions = self.validator.positions(stamps, sequences)
        texts, redactions = scrub_texts(texts, self.validator.limits.pii_scrubbing)
        blocks, cut = self.blocks(texts, stamps, kinds, session_ids, positions)
        return blocks, cut, redactions

    def block_matrix(self, texts: list[str], timestamps: np.ndarray, batch: int = 32,
                     ) -> np.ndarray:
        """[N, 8320] concatenated blocks of many texts in their order, ``batch`` at a time
        with texts of like length together (a batch is padded to its longest), with progress
        (a line per 640 texts when stdout is not a terminal)."""
        out = np.zeros((len(texts), sum(e.dim for e in EMBEDDERS)), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        stamps = np.asarray(timestamps)
        start, tty = time.perf_counter(), sys.stdout.isatty()
        for i in range(0, len(texts), batch):
            rows = order[i:i + batch]
            blocks, _, _ = self.encode([texts[j] for j in rows], stamps[rows])
            out[rows] = concat_blocks(blocks)
            done = min(i + batch, len(texts))
            if tty or done % (20 * batch) == 0 or done == len(texts):
                print(f"{chr(13) if tty else ''}  blocks {done}/{len(texts)} texts, "
                      f"{time.perf_counter() - start:.0f} s", end="" if tty else "\n", flush=True)
        if tty:
            print()
        return out

    def embed(self, texts: list[str], timestamps: np.ndarray,
              kinds: list[Kind] | None = None, **controls: np.ndarray) -> PipelineOutput:
        """What fused_text answers: validation, PII scrubbing, twelve blocks, FuseMoE.

        ``controls``: the optional gate inputs (top_k, temperature, focus, presence) as
        ``Validator.controls`` takes them.
        """
        blocks, cut, redactions = self.encode(texts, timestamps, kinds)
        gate = self.validator.controls(len(texts), **controls)
        return self.fuse(blocks, cut, redactions, gate)

    def fuse(self, blocks: dict[str, np.ndarray], cut: np.ndarray, redactions: np.ndarray,
             gate: GateControls) -> PipelineOutput:
        fused = fusemoe.fuse(self.fusemoe, torch.from_numpy(concat_blocks(blocks)), gate)
        return PipelineOutput(fused.fused.numpy(), fused.expert_weights.numpy(),
                              fused.selected_experts.numpy(), blocks, cut, redactions)

    def embed_images(self, images: list[bytes], timestamps: np.ndarray) -> PipelineOutput:
        """What fused_image answers: each image decoded and prepared as CLIP's processor
        does, E10 from the vision tower, E2, E3 and E4 from its time, FuseMoE fusing those
        four blocks with the text blocks missing (zeros in ``blocks``; FuseMoE's presence mask
        replaces them by its fill)."""
        from ensemble.images import prepare

        if self._images is None:
            self._images = ImageEmbedder(version_dir(self.repository, IMAGE_EMBEDDER_MODEL))
        stamps = self.validator.timestamps(np.asarray(timestamps))
        pixels = np.stack([prepare(data, f"IMAGE[{i}]", self.validator.limits)
                           for i, data in enumerate(images)])
        rows = len(images)
        blocks = {e.id: np.zeros((rows, e.dim), dtype=np.float32) for e in EMBEDDERS}
        blocks["E10"] = self._images.embed(pixels)
        for b in ("E2", "E3", "E4"):
            blocks[b] = self.embedders[b].embed_times(stamps)
        presence = np.tile([e.id in IMAGE_BLOCKS for e in EMBEDDERS], (rows, 1))
        gate = self.validator.controls(rows, presence=presence,
                                       from_image=np.ones(rows, dtype=bool))
        return self.fuse(blocks, np.zeros((rows, len(EMBEDDERS)), dtype=bool),
                         np.zeros((rows, len(PII_TYPES)), dtype=np.int32), gate)

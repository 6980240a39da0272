"""ONNX export of the pooled embedder wrappers, with named tensors and dynamic axes."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from export.registry import ATTENTION_MASK, INPUT_IDS

OPSET = 17  # ONNX Runtime 1.31 and Triton's onnxruntime backend both run it; LayerNorm is native


def example_inputs(batch: int, length: int, pad: int, vocab_size: int,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of random token ids with ragged lengths (row 0 is the full length)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (batch, length), generator=g)
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    return ids.long(), mask


def export(module: nn.Module, path: Path, output_name: str,
           example: tuple[torch.Tensor, ...]) -> None:
    """Export with the legacy TorchScript exporter: dynamic batch and sequence axes."""
    axes = {0: "batch", 1: "sequence"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), dynamo=False, opset_version=OPSET,
            input_names=[INPUT_IDS, ATTENTION_MASK], output_names=[output_name],
            dynamic_axes={INPUT_IDS: axes, ATTENTION_MASK: axes, output_name: {0: "batch"}},
        )

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
           example: tuple[torch.Tensor, ...], extra_inputs: tuple[str, ...] = ()) -> None:
    """Export with the legacy TorchScript exporter: dynamic batch and sequence axes.

    ``extra_inputs`` are further [batch, sequence] int64 masks after the two token inputs;
    the example gives them the attention mask's values.
    """
    axes = {0: "batch", 1: "sequence"}
    names = [INPUT_IDS, ATTENTION_MASK, *extra_inputs]
    example = (*example[:2], *(example[1] for _ in extra_inputs))
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), dynamo=False, opset_version=OPSET,
            input_names=names, output_names=[output_name],
            dynamic_axes={**{n: axes for n in names}, output_name: {0: "batch"}},
        )

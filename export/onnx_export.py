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


def export_fp16(module: nn.Module, path: Path, output_name: str,
                example: tuple[torch.Tensor, torch.Tensor]) -> None:
    """FP16 graph: the module in half precision through the dynamo exporter (the legacy
    exporter does not give a runnable FP16 graph). Token inputs stay int64; the output is
    float16."""
    import copy

    import onnx

    half = copy.deepcopy(module).half().eval()
    names = [INPUT_IDS, ATTENTION_MASK]
    dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
    shapes = {n: {0: dims["batch"], 1: dims["sequence"]} for n in names}
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_suffix(".staged.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(half, example, str(staged), dynamo=True, opset_version=18,
                          input_names=names, output_names=["staged_output"],
                          dynamic_shapes=shapes, verbose=False)
    model = onnx.load(str(staged))
    _rename_value(model, output_name, f"{output_name}_inner")  # free the name first
    _rename_value(model, "staged_output", output_name)
    onnx.save(model, str(path))
    staged.unlink()
    for extra in path.parent.glob(staged.name + "*"):
        extra.unlink()


def _rename_value(model, old: str, new: str) -> None:
    graph = model.graph
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def export(module: nn.Module, path: Path, output_name: str,
           example: tuple[torch.Tensor, torch.Tensor],
           output_axes: dict[int, str] | None = None) -> None:
    """Export with the legacy TorchScript exporter: dynamic batch and sequence axes on the
    inputs; ``output_axes`` on the output (default: the batch only)."""
    axes = {0: "batch", 1: "sequence"}
    names = [INPUT_IDS, ATTENTION_MASK]
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), dynamo=False, opset_version=OPSET,
            input_names=names, output_names=[output_name],
            dynamic_axes={**{n: axes for n in names},
                          output_name: output_axes or {0: "batch"}},
        )


def export_images(module: nn.Module, path: Path, input_name: str, output_name: str,
                  example: torch.Tensor) -> None:
    """Export an image module (pixels [B, 3, H, W] -> [B, dim]) with a dynamic batch axis."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})

"""Precision variants: plans per model, INT8 graphs and their FP32 exceptions, FP8 graphs on
ONNX Runtime's CPU provider, FuseMoE in INT8."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ensemble.stages import TokenBatch, TokenEmbedder, version_dir
from export.architectures import architecture
from export.build import tokenizer_ids
from export.onnx_export import example_inputs, export
from export.precision import PrecisionPlan, quantize_int8
from export.registry import Runtime, embedder, tokenizer_family


def test_a_plan_gives_each_model_its_precision():
    plan = PrecisionPlan.parse("int8,E6=fp32,fusemoe=fp32")
    assert (plan.of("E1"), plan.of("E6"), plan.of("fusemoe")) == ("int8", "fp32", "fp32")
    assert PrecisionPlan.parse("E10=fp8").of("E1") == "fp32"
    assert str(PrecisionPlan.parse(str(plan))) == str(plan)
    with pytest.raises(ValueError, match="'int4'"):
        PrecisionPlan.parse("int4")
    with pytest.raises(ValueError, match="'E1x'"):
        PrecisionPlan.parse("E1x=int8")


@pytest.fixture(scope="module")
def e8_graph(repository, tmp_path_factory):
    spec = embedder("E8")
    ids = tokenizer_ids(tokenizer_family(spec.tokenizer), repository)
    path = tmp_path_factory.mktemp("e8") / "fp32.onnx"
    export(architecture(spec).tiny_module(spec, ids), path, "embedding",
           example_inputs(2, 16, ids.pad, ids.vocab_size))
    return path, ids


def _run(path, x, mask):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": x, "attention_mask": mask})[0]


def test_int8_quantizes_every_matmul_but_the_ones_kept_in_fp32(e8_graph, tmp_path):
    source, ids = e8_graph
    target = tmp_path / "int8.onnx"
    kept = quantize_int8(source, target, ("layer.0/attention/self/query",))
    assert kept == ["/model/encoder/layer.0/attention/self/query/MatMul"]
    nodes = {n.name: n.op_type for n in onnx.load(str(target)).graph.node}
    assert nodes[kept[0]] == "MatMul"  # still FP32
    assert any(op == "MatMulInteger" for op in nodes.values())
    quantized = [n for n in nodes if "layer.1/attention/self/query" in n]
    assert quantized and all(nodes[n] != "MatMul" or "quant" in n.lower() for n in quantized)
    x, mask = (t.numpy() for t in example_inputs(6, 20, ids.pad, ids.vocab_size, seed=4))
    a, b = _run(source, x, mask), _run(target, x, mask)
    assert np.min(np.sum(a * b, axis=1)) >= 0.99  # unit vectors: the cosine


def test_an_int8_build_records_its_precision(tmp_path):
    from export.build import build

    for precision in ("fp32", "int8"):
        build(tmp_path / precision, "tiny", only={"E8"}, precision=precision)
    info = json.loads((version_dir(tmp_path / "int8", "e08_graph") / "build.json").read_text())
    assert info["precision"] == "int8" and info["int8_kept_fp32"] == []
    built = (tmp_path / "int8" / "e08_graph" / "configs" / "built.pbtxt").read_text()
    assert 'key: "precision"' in built and 'string_value: "int8"' in built
    fp32, int8 = (TokenEmbedder(embedder("E8"), version_dir(tmp_path / p, "e08_graph"))
                  for p in ("fp32", "int8"))
    ids = tokenizer_ids(tokenizer_family("bert-uncased"), tmp_path / "int8")
    batch = TokenBatch(*(t.numpy() for t in example_inputs(5, 12, ids.pad, ids.vocab_size)))
    assert int8.precision == "int8"
    assert np.min(np.sum(fp32.embed(batch) * int8.embed(batch), axis=1)) >= 0.99


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_per_token_output_keeps_its_batch_and_sequence_axes(precision, tmp_path):
    """ColBERT's graph answers a vector per token: both exporters give its output dynamic
    batch and sequence axes, and the attention mask stays its own input."""
    from export.onnx_export import export_fp16

    class PerToken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, input_ids, attention_mask):
            x = 100 * input_ids.to(self.w.dtype) + attention_mask.to(self.w.dtype)
            return x.unsqueeze(-1) * self.w

    ids, mask = torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
    if precision == "fp16":
        export_fp16(PerToken().eval(), tmp_path / "model.onnx", "token_vectors", (ids, mask))
    else:
        export(PerToken().eval(), tmp_path / "model.onnx", "token_vectors", (ids, mask),
               {0: "batch", 1: "sequence"})
    ids = np.arange(21, dtype=np.int64).reshape(3, 7) % 2
    mask = np.ones_like(ids)
    mask[:, 4:] = 0
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    out = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert out.shape == (3, 7, 3)
    np.testing.assert_allclose(out[..., 0], 100 * ids + mask)


def _fp8_graph(path) -> None:
    """The smallest FP8 Q/DQ pattern ONNX Runtime's CPU provider mis-fuses above basic."""
    from onnx import TensorProto, helper, numpy_helper

    dim = 4
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["ids", "axes"], ["summed"], keepdims=1),
        helper.make_node("QuantizeLinear", ["summed", "scale", "zp"], ["summed_q"]),
        helper.make_node("DequantizeLinear", ["summed_q", "scale", "zp"], ["summed_dq"]),
        helper.make_node("QuantizeLinear", ["w", "w_scale", "zp"], ["w_q"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "zp"], ["w_dq"]),
        helper.make_node("MatMul", ["summed_dq", "w_dq"], ["embedding"], name="proj/MatMul")]
    weights = np.random.default_rng(0).standard_normal((1, dim)).astype(np.float32)
    graph = helper.make_graph(
        nodes, "fp8",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "l"])
         for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["b", dim])],
        [numpy_helper.from_array(weights, "w"),
         numpy_helper.from_array(np.array([1], np.int64), "axes"),
         numpy_helper.from_array(np.array(0.5, np.float32), "scale"),
         numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
         helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.save(model, str(path))


def test_fp8_graphs_run_at_basic_optimisation_whatever_the_runtime_asks(tmp_path):
    _fp8_graph(tmp_path / "model.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with pytest.raises(Exception, match="float8e4m3fn"):  # what the cap avoids
        ort.InferenceSession(str(tmp_path / "model.onnx"), options,
                             providers=["CPUExecutionProvider"])
    (tmp_path / "build.json").write_text(json.dumps({
        "runtime": "onnx", "precision": "fp8", "pad_token_id": 0, "max_length": 128}))
    model = TokenEmbedder(embedder("E8"), tmp_path, Runtime(graph_optimization="all"))
    ids = np.ones((2, 3), dtype=np.int64)
    out = model.forward(TokenBatch(ids, ids))
    assert out.shape == (2, 4) and np.isfinite(out).all()


def test_fusemoe_in_int8_stays_close_to_fp32(tmp_path):
    from ensemble import fusemoe
    from ensemble.validation import Validator
    from export.artifacts import ArtifactError
    from export.registry import FuseMoEConfig

    small = FuseMoEConfig(gate_hidden=64, expert_hidden=128, output_dim=96)
    fusemoe.save(fusemoe.seeded(small), tmp_path, "v1")
    fp32, _ = fusemoe.load(tmp_path, small, precision="fp32")
    int8, _ = fusemoe.load(tmp_path, small, precision="int8")
    assert isinstance(int8.experts[0].fc1, torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(int8.gate_fc1, torch.nn.Linear)  # the gate stays FP32 ...
    x = torch.nn.functional.normalize(torch.randn(64, small.input_dim), dim=-1)
    controls = Validator().controls(64)
    a, b = fusemoe.fuse(fp32, x, controls), fusemoe.fuse(int8, x, controls)
    # ... so every row keeps its experts (the seeded gate's probabilities are close: an
    # INT8 gate switched them for some rows, which then fused to other vectors).
    assert torch.equal(a.selected_experts, b.selected_experts)
    assert torch.min(torch.sum(a.fused * b.fused, dim=1)) >= 0.99
    with pytest.raises(ArtifactError, match="fp16"):
        fusemoe.load(tmp_path, small, precision="fp16")

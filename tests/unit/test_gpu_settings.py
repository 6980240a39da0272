"""GPU execution as a serving setting, checked without a GPU: the GPU configs differ from the CPU
ones only where they must, the provider list and its fallbacks, and a GPU-placed instance
on a CPU-only onnxruntime still serving the same vectors."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from ensemble.stages import (
    CPU_PROVIDER,
    PROVIDERS,
    FamilyTokenizer,
    Placement,
    TokenEmbedder,
    execution_providers,
    torch_device,
    unused_providers,
)
from export.registry import EMBEDDERS, GPU, Gpu, Input, tokenizer_family
from export.repository import GPU_ADAPTERS, all_configs, placed

TRT, CUDA = PROVIDERS["tensorrt"], PROVIDERS["cuda"]
ON_GPU = Placement(GPU, device_id=1, model="e01_semantic")


def _configs() -> list[mc.ModelConfig]:
    return [cfg for cfg, adapter in all_configs() if adapter is not None]


def test_gpu_configs_differ_from_cpu_only_in_placement_of_neural_models():
    moved = set()
    for cpu in _configs():
        gpu = placed(cpu, "gpu")
        assert placed(cpu, "cpu") == cpu
        if cpu.parameters["adapter"].string_value not in GPU_ADAPTERS:
            assert gpu == cpu, cpu.name
            continue
        moved.add(cpu.name)
        assert [g.kind for g in gpu.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        assert [g.count for g in gpu.instance_group] == [g.count for g in cpu.instance_group]
        added = {k: v.string_value for k, v in gpu.parameters.items()
                 if k not in cpu.parameters}
        assert added == GPU.parameters()
        # Put the placement back: nothing else may differ.
        back = mc.ModelConfig()
        back.CopyFrom(gpu)
        for group in back.instance_group:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
        for key in added:
            del back.parameters[key]
        assert back == cpu, cpu.name
    token_models = {e.triton_model for e in EMBEDDERS if e.input is Input.TOKENS}
    assert moved == token_models | {"fusemoe", "e10_image"}


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="device"):
        placed(_configs()[0], "tpu")


def test_gpu_settings_round_trip_through_config_parameters():
    gpu = Gpu(providers=("cuda",), engine_cache="/cache", trt_fp16=False)
    assert Gpu.from_parameters(gpu.parameters()) == gpu
    assert Placement.of_instance("GPU", "2", gpu.parameters()) == Placement(gpu, 2)
    assert Placement.of_instance("CPU", "0", gpu.parameters()) == Placement()


def test_cpu_instance_asks_for_the_cpu_only():
    assert execution_providers(Placement(), [TRT, CUDA, CPU_PROVIDER]) == (
        [(CPU_PROVIDER, {})], [])


def test_gpu_instance_tries_tensorrt_then_cuda_then_cpu():
    providers, notes = execution_providers(ON_GPU, [TRT, CUDA, CPU_PROVIDER])
    assert [name for name, _ in providers] == [TRT, CUDA, CPU_PROVIDER]
    assert notes == []
    trt = providers[0][1]
    assert trt["device_id"] == "1" and trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == f"{GPU.engine_cache}/e01_semantic"
    assert providers[1][1]["device_id"] == "1"


def test_fp16_engines_can_be_turned_off():
    fp32 = Placement(Gpu(trt_fp16=False), model="e01_semantic")
    providers, _ = execution_providers(fp32, [TRT, CUDA, CPU_PROVIDER])
    assert providers[0][1]["trt_fp16_enable"] == "False"


def test_missing_providers_fall_back_with_a_reason():
    providers, notes = execution_providers(ON_GPU, [CUDA, CPU_PROVIDER])
    assert [name for name, _ in providers] == [CUDA, CPU_PROVIDER]
    assert len(notes) == 1 and "tensorrt" in notes[0] and "onnxruntime-gpu" in notes[0]
    providers, notes = execution_providers(ON_GPU, [CPU_PROVIDER])
    assert providers == [(CPU_PROVIDER, {})]
    assert len(notes) == 2
    odd = Placement(Gpu(providers=("rocm",)))
    assert "rocm" in execution_providers(odd, [CPU_PROVIDER])[1][0]


def test_providers_that_failed_to_initialise_are_named():
    asked = [(TRT, {}), (CUDA, {}), (CPU_PROVIDER, {})]
    notes = unused_providers(asked, [CUDA, CPU_PROVIDER])
    assert len(notes) == 1 and notes[0].startswith(TRT)
    assert unused_providers(asked, [TRT, CUDA, CPU_PROVIDER]) == []


def test_torch_device():
    assert torch_device(Placement(), True) == ("cpu", [])
    assert torch_device(ON_GPU, True) == ("cuda:1", [])
    device, notes = torch_device(ON_GPU, False)
    assert device == "cpu" and "CUDA" in notes[0]


def test_gpu_instance_on_a_cpu_only_onnxruntime_serves_the_same_vectors(repository):
    spec = next(e for e in EMBEDDERS if e.id == "E1")
    directory = repository / spec.triton_model / "1"
    on_cpu = TokenEmbedder(spec, directory)
    fallback = TokenEmbedder(spec, directory, placement=ON_GPU)
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback is not what runs")
    assert fallback.session.get_providers() == [CPU_PROVIDER]
    assert any("onnxruntime-gpu" in note for note in fallback.placement_notes)
    assert fallback.where == f"onnxruntime {CPU_PROVIDER}"
    family = tokenizer_family(spec.tokenizer)
    tokenizer = FamilyTokenizer(repository / family.triton_model / "1", family)
    batch = tokenizer.encode(["a GPU instance that falls back", "to the CPU"])
    np.testing.assert_array_equal(fallback.embed(batch), on_cpu.embed(batch))


@pytest.mark.gpu
def test_on_a_gpu_the_session_and_fusemoe_run_there(repository):
    import onnxruntime as ort
    import torch

    if CUDA not in ort.get_available_providers() or not torch.cuda.is_available():
        pytest.skip("needs onnxruntime-gpu and a CUDA device")
    spec = next(e for e in EMBEDDERS if e.id == "E1")
    directory = repository / spec.triton_model / "1"
    on_gpu = TokenEmbedder(spec, directory, placement=Placement(Gpu(providers=("cuda",)), 0))
    assert on_gpu.session.get_providers()[0] == CUDA and on_gpu.placement_notes == []
    family = tokenizer_family(spec.tokenizer)
    batch = FamilyTokenizer(repository / family.triton_model / "1", family).encode(
        ["measured on a GPU", "against the CPU"])
    cosine = np.sum(on_gpu.embed(batch) * TokenEmbedder(spec, directory).embed(batch), axis=1)
    assert np.all(cosine >= 0.9999), cosine


@pytest.mark.parametrize("model", ["e01_semantic", "tok_bert_uncased"])
def test_a_gpu_build_writes_placed_built_configs(repository, tmp_path, model):
    import shutil

    from google.protobuf import text_format

    from export.build import BUILT_CONFIG, write_built_config

    (tmp_path / model / "1").mkdir(parents=True)
    shutil.copy(repository / model / "config.pbtxt", tmp_path / model)
    shutil.copy(repository / model / "1" / "build.json", tmp_path / model / "1")
    built = {}
    for device in ("cpu", "gpu"):
        write_built_config(tmp_path, model, device=device)
        built[device] = text_format.Parse(
            (tmp_path / model / "configs" / f"{BUILT_CONFIG}.pbtxt").read_text(),
            mc.ModelConfig())
    gpu, cpu = built["gpu"], built["cpu"]
    neural = model.startswith("e01")
    # What a GPU build changes, spelled out: a neural model's instances on the GPU and the
    # GPU settings as parameters (TensorRT, then CUDA; the engine cache; FP16); nothing else.
    want = mc.ModelConfig()
    want.CopyFrom(cpu)
    if neural:
        for group in want.instance_group:
            group.kind = mc.ModelInstanceGroup.KIND_GPU
        for key, value in {"device": "gpu", "execution_providers": "tensorrt,cuda",
                           "trt_engine_cache": "/opt/fusedembed/trt-cache",
                           "trt_fp16": "true"}.items():
            want.parameters[key].string_value = value
    assert gpu == want
    assert all(g.kind == mc.ModelInstanceGroup.KIND_CPU for g in cpu.instance_group)
    assert gpu.parameters["weights"] == cpu.parameters["weights"]

import dataclasses
import re

import pytest

from export import registry as r

# The design's table of the twelve embedders (DESIGN.md), written out on its own: the
# registry must say the same, and the built models must produce blocks of these widths.
DESIGN_DIMS = {"E1": 1024, "E2": 512, "E3": 512, "E4": 512, "E5": 768, "E6": 1536, "E7": 768,
               "E8": 384, "E9": 1024, "E10": 768, "E11": 384, "E12": 128}


def test_the_registry_has_the_design_s_twelve_embedders_and_widths():
    assert {e.id: e.dim for e in r.EMBEDDERS} == DESIGN_DIMS
    assert [e.id for e in r.EMBEDDERS] == list(DESIGN_DIMS)


def test_the_built_models_answer_blocks_of_the_design_s_widths(repository):
    """Each served stage's block, as the in-process pipeline computes it from the built
    weights, has the design's width, and FuseMoE takes their concatenation."""
    import numpy as np

    from ensemble import fusemoe
    from ensemble.pipeline import Pipeline

    out = Pipeline(repository).embed(["a sentence", "another one"],
                                     np.array([0, 1_700_000_000], dtype=np.int64))
    assert {b: v.shape for b, v in out.blocks.items()} == {
        b: (2, d) for b, d in DESIGN_DIMS.items()}
    model, _ = fusemoe.load(repository / r.FUSEMOE_MODEL / "1")
    assert model.cfg.input_dim == sum(DESIGN_DIMS.values()) == 8320
    assert out.fused.shape == (2, 1536)


def test_triton_names_are_unique_and_match_the_design():
    names = [e.triton_model for e in r.EMBEDDERS]
    assert len(set(names)) == 12
    assert names[0] == "e01_semantic" and names[-1] == "e12_late_interaction"


def test_block_offsets_tile_the_concatenation():
    offsets = r.block_offsets()
    assert offsets["E1"] == (0, 1024)
    assert offsets["E12"] == (8320 - 128, 8320)
    ends = [offsets[e.id][1] for e in r.EMBEDDERS]
    starts = [offsets[e.id][0] for e in r.EMBEDDERS]
    assert starts[1:] == ends[:-1]


def test_token_models_fit_their_tokenizer_family():
    for e in r.EMBEDDERS:
        if e.input is r.Input.TOKENS:
            assert e.max_length <= r.tokenizer_family(e.tokenizer).max_length
        else:
            assert e.tokenizer is None


# --- parameters written into configs and read back by the adapters --------------------------

def test_runtime_settings_round_trip_through_config_parameters():
    runtime = r.Runtime(threads=3, instances=1, graph_optimization="basic",
                        length_buckets=(16, 128), max_batch_tokens=4096, max_logits_mib=64)
    params = runtime.parameters()
    assert params == {"threads": "3", "graph_optimization": "basic", "length_buckets": "16,128",
                      "max_batch_tokens": "4096", "max_logits_mib": "64"}
    back = r.Runtime.from_parameters(params)
    assert (back.threads, back.graph_optimization, back.length_buckets, back.max_batch_tokens,
            back.max_logits_mib) == (3, "basic", (16, 128), 4096, 64)


def test_missing_runtime_parameters_are_the_library_defaults():
    back = r.Runtime.from_parameters({})
    assert (back.threads, back.graph_optimization, back.length_buckets, back.max_batch_tokens,
            back.max_logits_mib) == (0, "all", (), 0, 0)
    assert r.Runtime.from_parameters({"length_buckets": "8,,16"}).length_buckets == (8, 16)


def test_gpu_settings_round_trip_and_default():
    gpu = r.Gpu(providers=("cuda",), engine_cache="/cache", trt_fp16=False)
    params = gpu.parameters()
    assert params == {"device": "gpu", "execution_providers": "cuda",
                      "trt_engine_cache": "/cache", "trt_fp16": "false"}
    assert r.Gpu.from_parameters(params) == gpu
    assert r.Gpu.from_parameters({}) == r.Gpu(("tensorrt", "cuda"), "/opt/fusedembed/trt-cache",
                                              True)
    assert r.Gpu.from_parameters({"execution_providers": "tensorrt,,cuda",
                                  "trt_fp16": "TRUE"}) == r.Gpu(("tensorrt", "cuda"),
                                                                r.Gpu.engine_cache, False)
    assert r.Gpu().parameters() == {"device": "gpu", "execution_providers": "tensorrt,cuda",
                                    "trt_engine_cache": "/opt/fusedembed/trt-cache",
                                    "trt_fp16": "true"}


def test_limits_round_trip_with_pii_as_on_or_off():
    limits = r.Limits(max_text_bytes=100, min_temperature=0.5, pii_scrubbing=False)
    params = limits.parameters("max_text_bytes", "min_temperature", "pii_scrubbing")
    assert params == {"max_text_bytes": "100", "min_temperature": "0.5", "pii_scrubbing": "off"}
    back = r.Limits.from_parameters(params)
    assert back == limits and isinstance(back.max_text_bytes, int)
    assert isinstance(back.min_temperature, float)
    assert r.Limits().parameters("pii_scrubbing") == {"pii_scrubbing": "on"}
    assert r.Limits.from_parameters({"pii_scrubbing": "on"}).pii_scrubbing is True
    assert r.Limits.from_parameters({"pii_scrubbing": "false"}).pii_scrubbing is True
    assert r.Limits.from_parameters({}) == r.Limits()
    assert r.Limits.from_parameters({"max_sequence": "7"}).max_sequence == 7


def test_failsafe_parameters_name_every_setting():
    params = r.Failsafe(deadline_ms=10, required=("E1", "E11"), min_other_blocks=3,
                        breaker_failures=4, breaker_window_ms=5, breaker_cooldown_ms=6,
                        breaker_probes=7).parameters()
    assert params == {"deadline_ms": "10", "required": "E1,E11", "min_other_blocks": "3",
                      "breaker_failures": "4", "breaker_window_ms": "5",
                      "breaker_cooldown_ms": "6", "breaker_probes": "7"}


def test_a_process_budget_is_its_model_s_override_or_the_default():
    budget = r.MemoryBudget(server_mib=100, default_process_mib=10,
                            process_overrides=(("fusemoe", 30), ("e05_causal", 20)))
    assert budget.process_mib("fusemoe") == 30
    assert budget.process_mib("e05_causal#2") == 20  # a further instance of the model
    assert budget.process_mib("e01_semantic") == 10
    assert budget.process_mib("tritonserver") == 10


def test_lookups_by_id_and_family_name():
    assert r.embedder("E11").triton_model == "e11_entity"
    with pytest.raises(KeyError, match="unknown embedder 'E13'"):
        r.embedder("E13")
    assert r.usage_tokenizer().name == r.embedder("E1").tokenizer
    family = r.tokenizer_family(r.embedder("E5").tokenizer)
    assert family.name == r.embedder("E5").tokenizer
    with pytest.raises(KeyError, match="unknown tokenizer family 'nope'"):
        r.tokenizer_family("nope")


def _spec(block: str, **changes):
    return dataclasses.replace(r.embedder(block), **changes)


@pytest.mark.parametrize(("change", "message"), [
    (lambda: {"EMBEDDERS": (*r.EMBEDDERS[:-1], _spec("E12", dim=129))},
     "embedder dims sum to 8321, FuseMoE expects 8320"),
    (lambda: {"FUSEMOE": dataclasses.replace(r.FUSEMOE, num_blocks=11)},
     "FuseMoE block count differs from the registry"),
    (lambda: {"EMBEDDERS": (_spec("E1", tokenizer=None), *r.EMBEDDERS[1:])},
     "E1: a token model needs a tokenizer family, no other"),
    (lambda: {"EMBEDDERS": (r.EMBEDDERS[0], _spec("E2", tokenizer=r.EMBEDDERS[0].tokenizer),
                            *r.EMBEDDERS[2:])},
     "E2: a token model needs a tokenizer family, no other"),
    (lambda: {"EMBEDDERS": (_spec("E1", max_length=None), *r.EMBEDDERS[1:])},
     "E1: max_length must fit in"),
    (lambda: {"EMBEDDERS": (_spec("E1", max_length=10**6), *r.EMBEDDERS[1:])},
     "E1: max_length must fit in"),
    (lambda: {"EMBEDDERS": (_spec("E1", published=None), *r.EMBEDDERS[1:])},
     "E1: a neural model needs its published config"),
])
def test_the_registry_refuses_inconsistent_entries(monkeypatch, change, message):
    r._check()  # the registry as it is passes
    for name, value in change().items():
        monkeypatch.setattr(r, name, value)
    with pytest.raises(AssertionError, match="^" + re.escape(message)):
        r._check()

"""The committed config.pbtxt / model.py files are exactly what the registry generates."""

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export import registry as r
from export.repository import REPOSITORY, rendered, stale


def test_committed_repository_does_not_drift():
    assert stale() == [], "run `python -m export.repository` and commit the result"


def _configs() -> dict[str, mc.ModelConfig]:
    out = {}
    for path, text in rendered().items():
        if path.name == "config.pbtxt":
            out[path.parent.name] = text_format.Parse(text, mc.ModelConfig())
    return out


def test_every_model_of_the_registry_has_a_config():
    names = set(_configs())
    expected = {e.triton_model for e in r.EMBEDDERS} | {f.triton_model
                                                        for f in r.TOKENIZER_FAMILIES}
    assert names == expected | {r.PREPROCESS_MODEL, r.FUSEMOE_MODEL, r.ENSEMBLE_MODEL,
                                r.CACHED_MODEL, r.FAILSAFE_MODEL, r.IMAGE_MODEL,
                                r.IMAGE_EMBEDDER_MODEL}
    assert all((REPOSITORY / n / "config.pbtxt").is_file() for n in names)


def test_ensemble_contract():
    cfg = _configs()[r.ENSEMBLE_MODEL]
    assert cfg.max_batch_size >= 32
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in cfg.input] == [
        ("TEXT", mc.TYPE_STRING, [1], False), ("TIMESTAMP", mc.TYPE_INT64, [1], False),
        ("KIND", mc.TYPE_STRING, [1], True), ("TRUNCATE", mc.TYPE_BOOL, [1], True),
        ("SESSION", mc.TYPE_STRING, [1], True), ("SEQUENCE", mc.TYPE_INT64, [1], True),
        ("TEMPERATURE", mc.TYPE_FP32, [1], True), ("TOP_K", mc.TYPE_INT32, [1], True),
        ("FOCUS", mc.TYPE_FP32, [12], True), ("PRESENCE", mc.TYPE_BOOL, [12], True),
        ("DIMENSIONS", mc.TYPE_INT32, [1], True), ("ENCODING", mc.TYPE_STRING, [1], True),
        ("SPARSE_TOP_K", mc.TYPE_INT32, [1], True)]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        ("REDACTIONS", mc.TYPE_INT32, [7]), ("TOKENS", mc.TYPE_INT32, [1]),
        ("FUSED", mc.TYPE_FP32, [-1]), ("FUSED_INT8", mc.TYPE_INT8, [-1]),
        ("FUSED_BINARY", mc.TYPE_UINT8, [-1]), ("FUSED_SCALE", mc.TYPE_FP32, [-1]),
        ("EXPERT_WEIGHTS", mc.TYPE_FP32, [8]),
        ("SELECTED_EXPERTS", mc.TYPE_INT32, [-1]), ("TRUNCATED", mc.TYPE_BOOL, [12]),
        ("FUSION_VERSION", mc.TYPE_STRING, [1]),
        *[(e.block_name, mc.TYPE_FP32, [e.dim]) for e in r.EMBEDDERS],
        ("E6_SPARSE_INDICES", mc.TYPE_INT32, [-1]), ("E6_SPARSE_WEIGHTS", mc.TYPE_FP32, [-1]),
        ("E12_TOKENS", mc.TYPE_FP32, [-1, 128]), ("E12_TOKEN_COUNT", mc.TYPE_INT32, [1])]
    # Off: Triton's cache key ignores the requested outputs (see export/repository.py).
    assert not cfg.response_cache.enable


def test_the_cached_entry_point_has_one_output_and_the_cache_on():
    """Triton's cache key leaves out the requested outputs: with FUSED as the only output,
    no cached answer can lack what a later request asks for."""
    configs = _configs()
    cached, plain = configs[r.CACHED_MODEL], configs[r.ENSEMBLE_MODEL]
    assert cached.response_cache.enable
    assert [o.name for o in cached.output] == [r.FUSED]
    # SPARSE_TOP_K shapes E6's terms, which the cached entry point does not answer; it
    # answers the full float vector only.
    assert list(cached.input) == [i for i in plain.input
                                  if i.name not in (r.SPARSE_TOP_K, *r.OUTPUT_CONTROLS)]
    assert [list(o.dims) for o in cached.output] == [[1536]]
    assert [s.model_name for s in cached.ensemble_scheduling.step] == [
        s.model_name for s in plain.ensemble_scheduling.step]
    assert cached.ensemble_scheduling.step[-1].output_map == {r.FUSED: r.FUSED}


def test_neural_models_carry_the_runtime_defaults():
    configs = _configs()
    for e in r.EMBEDDERS:
        cfg = configs[e.triton_model]
        if e.input is not r.Input.TOKENS:
            continue
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert r.Runtime.from_parameters(params) == r.RUNTIME, e.triton_model
        assert cfg.instance_group[0].count == r.RUNTIME.instances
    assert configs[r.FUSEMOE_MODEL].parameters["threads"].string_value == str(r.RUNTIME.threads)


@pytest.mark.parametrize("name", [r.ENSEMBLE_MODEL, r.CACHED_MODEL])
def test_ensemble_steps_consume_only_what_is_produced(name):
    configs = _configs()
    ensemble = configs[name]
    available = {i.name for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        required = {i.name for i in model.input if not i.optional}
        assert required <= set(step.input_map) <= {i.name for i in model.input}, step.model_name
        assert all(i.optional for i in model.input
                   if i.name in (r.KIND, r.TRUNCATE, r.SPARSE_TOP_K, r.SESSION, r.SEQUENCE,
                                 *r.GATE_CONTROLS))
        assert set(step.input_map.values()) <= available, step.model_name
        assert set(step.output_map) <= {o.name for o in model.output}
        available |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= available


def test_every_embedder_batches_dynamically_and_token_inputs_are_ragged():
    configs = _configs()
    for e in r.EMBEDDERS:
        cfg = configs[e.triton_model]
        assert cfg.HasField("dynamic_batching") and cfg.max_batch_size >= 32
        assert cfg.model_warmup, e.triton_model
        if e.input is r.Input.TOKENS:
            token_inputs = [i for i in cfg.input
                            if i.name not in (r.KIND, r.TRUNCATE, r.SPARSE_TOP_K)]
            assert [i.name for i in token_inputs] == [r.INPUT_IDS, r.ATTENTION_MASK]
            assert all(i.allow_ragged_batch for i in token_inputs)


def test_the_entry_points_refuse_past_their_queue_bound():
    """Back-pressure at the entry: preprocess (the ensembles' first step), the fail-safe and
    fused_image refuse with REJECT once max_queue_size requests wait; the later steps do not refuse
    (Triton 2.51 would leave an ensemble request stuck), and no default timeout refuses
    valid slow work."""
    configs = _configs()
    entry = {r.PREPROCESS_MODEL, r.FAILSAFE_MODEL, r.IMAGE_MODEL}
    python = [c for c in configs.values() if c.backend == "python"]
    assert len(python) == len(configs) - 2  # every model but the two ensembles
    for cfg in python:
        policy = cfg.dynamic_batching.default_queue_policy
        assert cfg.HasField("dynamic_batching"), cfg.name
        if cfg.name in entry:
            assert policy.timeout_action == mc.ModelQueuePolicy.REJECT, cfg.name
            assert policy.max_queue_size == r.ENTRY_BATCHING.max_queue_size > 0, cfg.name
            assert policy.default_timeout_microseconds == 0 and policy.allow_timeout_override
        else:
            assert policy.max_queue_size == 0, cfg.name
    failsafe = {k: v.string_value for k, v in configs[r.FAILSAFE_MODEL].parameters.items()}
    assert int(failsafe["max_text_bytes"]) == r.LIMITS.max_text_bytes
    assert (int(failsafe["min_timestamp"]), int(failsafe["max_timestamp"])) == (
        r.LIMITS.min_timestamp, r.LIMITS.max_timestamp)


def test_image_entry_point_contract():
    configs = _configs()
    image = configs[r.IMAGE_MODEL]
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in image.input] == [
        ("IMAGE", mc.TYPE_STRING, [1], False), ("TIMESTAMP", mc.TYPE_INT64, [1], False),
        ("SESSION", mc.TYPE_STRING, [1], True), ("SEQUENCE", mc.TYPE_INT64, [1], True)]
    assert [(o.name, o.data_type, list(o.dims)) for o in image.output] == [
        ("FUSED", mc.TYPE_FP32, [1536]), ("EXPERT_WEIGHTS", mc.TYPE_FP32, [8]),
        ("SELECTED_EXPERTS", mc.TYPE_INT32, [-1]), ("FUSION_VERSION", mc.TYPE_STRING, [1]),
        ("E10", mc.TYPE_FP32, [768])]
    params = {k: v.string_value for k, v in image.parameters.items()}
    assert r.Limits.from_parameters(params) == r.LIMITS
    tower = configs[r.IMAGE_EMBEDDER_MODEL]
    assert tower.HasField("dynamic_batching") and tower.max_batch_size >= 32
    assert [(i.name, list(i.dims)) for i in tower.input] == [(r.PIXELS, [3, 224, 224])]
    assert tower.model_warmup

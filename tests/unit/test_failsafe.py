"""fused_text_failsafe's own logic (ensemble/serving/failsafe.py) with its steps stood in for:
which blocks it fuses without, what each step is sent, when it refuses, its breakers and
metrics. The served entry point against Triton: tests/server/test_faults.py, test_breaker.py."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from google.protobuf import json_format

from export import registry as r
from export.registry import EMBEDDERS, FAILSAFE_MODEL, Input, tokenizer_family
from export.repository import all_configs
from tests.unit import fake_pb_utils as pb

pb.install()
from ensemble.serving import failsafe

T0 = 1_700_000_000
ROWS = 2
IDS = {e.id: e for e in EMBEDDERS}


def config(**parameters: str) -> dict:
    """The generated config of fused_text_failsafe (what config.pbtxt holds), as the JSON the
    Python backend hands an adapter."""
    cfg = next(cfg for cfg, _ in all_configs() if cfg.name == FAILSAFE_MODEL)
    for key, value in parameters.items():
        cfg.parameters[key].string_value = value
    return json_format.MessageToDict(cfg, preserving_proto_field_name=True)


@pytest.fixture
def model(tmp_path):
    """The adapter on a repository whose token embedders take 8 tokens (E5: 20; E1 puts
    a prefix of 2 tokens before a passage and of 3 before a query), its steps answering
    healthy blocks of each embedder's width."""
    pb.reset()
    for spec in EMBEDDERS:
        if spec.input is Input.TOKENS:
            folder = tmp_path / spec.triton_model / "1"
            folder.mkdir(parents=True)
            info = {"max_length": 20 if spec.id == "E5" else 8}
            if spec.id == "E1":
                info["convention"] = {"insert": {"query": [5, 6, 4], "passage": [7, 8]}}
            (folder / "build.json").write_text(json.dumps(info))
    healthy()

    def make(**parameters: str):
        m = failsafe.TritonPythonModel()
        m.initialize({"model_config": json.dumps(config(**parameters)),
                      "model_name": FAILSAFE_MODEL,
                      "model_repository": str(tmp_path / FAILSAFE_MODEL),
                      "model_version": "1"})
        return m
    return make


def block_value(spec, rows: int) -> np.ndarray:
    """A block that says which embedder made it: every value is its number."""
    return np.full((rows, spec.dim), float(spec.id[1:]), dtype=np.float32)


def healthy() -> None:
    async def preprocess(given, outputs):
        rows = given["TEXT"].shape[0]
        return {r.CLEAN_TEXT: np.array([[f"clean {t[0].decode()}".encode()]
                                        for t in given["TEXT"]], dtype=np.object_),
                r.CLEAN_TIMESTAMP: given["TIMESTAMP"] + 1,
                r.CLEAN_SESSION: np.array([[b"s"]] * rows, dtype=np.object_),
                r.CLEAN_POSITION: given["TIMESTAMP"] + 2,
                "REDACTIONS": np.zeros((rows, 7), dtype=np.int32)}
    pb.HANDLERS[r.PREPROCESS_MODEL] = preprocess
    for family in {tokenizer_family(e.tokenizer).triton_model
                   for e in EMBEDDERS if e.input is Input.TOKENS}:
        async def tokenize(given, outputs):
            rows = given["TEXT"].shape[0]
            lengths = [len(t[0].split()) + 2 for t in given["TEXT"]]  # [CLS] words [SEP]
            mask = np.array([[1] * n + [0] * (max(lengths) - n) for n in lengths],
                            dtype=np.int64)
            return {r.INPUT_IDS: mask * 9, r.ATTENTION_MASK: mask[:rows]}
        pb.HANDLERS[family] = tokenize
    for spec in EMBEDDERS:
        answer(spec.id)

    async def fusemoe(given, outputs):
        rows = given["PRESENCE"].shape[0]
        return {"FUSED": np.ones((rows, 1536), dtype=np.float32),
                "EXPERT_WEIGHTS": np.zeros((rows, 8), dtype=np.float32),
                "SELECTED_EXPERTS": np.zeros((rows, 2), dtype=np.int32),
                "TRUNCATED": np.zeros((rows, 12), dtype=bool),
                "FUSION_VERSION": np.array([[b"v"]] * rows, dtype=np.object_)}
    pb.HANDLERS["fusemoe"] = fusemoe


def answer(block: str, delay_s: float = 0.0, error: str | None = None,
           flag: bool = False) -> None:
    spec = IDS[block]

    async def embed(given, outputs):
        if delay_s:
            await asyncio.sleep(delay_s)
        if error is not None:
            return pb.TritonError(error)
        rows = next(iter(given.values())).shape[0]
        out = {r.EMBEDDING: block_value(spec, rows)}
        if r.FLAG in outputs:
            out[r.FLAG] = np.full((rows, 1), flag, dtype=bool)
        return out
    pb.HANDLERS[spec.triton_model] = embed


def request(texts=("first text", "second text"), **extra: np.ndarray):
    rows = len(texts)
    inputs = {"TEXT": np.array([[t.encode()] for t in texts], dtype=np.object_),
              "TIMESTAMP": np.full((rows, 1), T0, dtype=np.int64), **extra}
    return pb.InferenceRequest(inputs=[pb.Tensor(k, v) for k, v in inputs.items()])


def run(m, *requests):
    return asyncio.run(m.execute(list(requests)))


def sent(model_name: str) -> list[dict[str, np.ndarray]]:
    return [given for name, given in pb.CALLS if name == model_name]


def fused_inputs() -> dict[str, np.ndarray]:
    (given,) = sent("fusemoe")
    return given


def missing_counter(block: str) -> float:
    return pb.METRICS[("fusedembed_failsafe_missing_blocks_total", (("block", block),))]


def test_every_block_healthy_is_fused_as_it_came_with_nothing_missing(model):
    (response,) = run(model(), request())
    assert not response.has_error()
    out = response.outputs()
    assert out["MISSING"].shape == (ROWS, 12) and not out["MISSING"].any()
    assert out["FUSED"].shape == (ROWS, 1536) and out["FUSED"].dtype == np.float32
    given = fused_inputs()
    for spec in EMBEDDERS:
        np.testing.assert_array_equal(given[spec.block_name], block_value(spec, ROWS))
        if spec.input is Input.TOKENS:
            assert given[spec.block_name + r.TRUNCATED_SUFFIX].tolist() == [[False], [False]]
    assert given["PRESENCE"].dtype == bool and given["PRESENCE"].all()
    assert all(v == 0 for k, v in pb.METRICS.items()
               if k[0] == "fusedembed_failsafe_missing_blocks_total")


def test_each_step_gets_the_inputs_of_its_kind(model):
    kinds = np.array([[b"query"], [b"passage"]], dtype=np.object_)
    truncate = np.array([[True], [True]])
    run(model(), request(KIND=kinds, TRUNCATE=truncate))
    (pre,) = sent(r.PREPROCESS_MODEL)
    assert set(pre) == {"TEXT", "TIMESTAMP"}
    for spec in EMBEDDERS:
        (given,) = sent(spec.triton_model)
        if spec.input is Input.TOKENS:
            expected = {r.INPUT_IDS, r.ATTENTION_MASK, "TRUNCATE"}
            if spec.convention.kind_aware:
                expected.add("KIND")
                np.testing.assert_array_equal(given["KIND"], kinds)
            assert set(given) == expected, spec.id
        elif spec.input is Input.TEXT:
            assert given["TEXT"].tolist() == [[b"clean first text"], [b"clean second text"]]
        elif spec.id == "E4":  # session and position, not the timestamp
            assert given["TIMESTAMP"].tolist() == [[T0 + 2]] * ROWS
            assert given["SESSION"].tolist() == [[b"s"]] * ROWS
        else:
            assert set(given) == {"TIMESTAMP"} and given["TIMESTAMP"].tolist() == [[T0 + 1]] * 2


def test_a_failing_block_is_filled_and_said_missing(model):
    answer("E7", error="E7 broke")
    answer("E11", flag=True)
    m = model()
    (response,) = run(m, request())
    assert not response.has_error()
    missing = response.outputs()["MISSING"]
    j = [e.id for e in EMBEDDERS].index("E7")
    assert missing[:, j].all() and missing.sum() == ROWS
    given = fused_inputs()
    assert not given["PRESENCE"][:, j].any() and given["PRESENCE"].sum() == ROWS * 11
    np.testing.assert_array_equal(given[IDS["E7"].block_name], np.zeros((ROWS, 768)))
    assert given[IDS["E7"].block_name + r.TRUNCATED_SUFFIX].tolist() == [[False], [False]]
    assert given[IDS["E11"].block_name + r.TRUNCATED_SUFFIX].tolist() == [[True], [True]]
    assert missing_counter("E7") == ROWS and missing_counter("E8") == 0


def test_a_block_past_the_deadline_is_left_out(model):
    answer("E9", delay_s=0.6)
    (response,) = run(model(deadline_ms="200"), request())
    assert not response.has_error()
    j = [e.id for e in EMBEDDERS].index("E9")
    assert response.outputs()["MISSING"][:, j].all()
    assert missing_counter("E9") == ROWS


def test_the_required_block_failing_fails_the_request_naming_why(model):
    answer("E1", error="out of memory")
    (response,) = run(model(), request())
    assert response.error().code() == pb.TritonError.UNAVAILABLE
    assert response.error().message() == (
        "E1 is required and did not answer: e01_semantic: out of memory")
    assert sent("fusemoe") == []


def test_the_required_block_late_says_so(model):
    answer("E1", delay_s=1.0)
    (response,) = run(model(deadline_ms="200"), request())
    assert response.error().message() == (
        "E1 is required and did not answer: no answer within the deadline")


def test_too_few_other_blocks_fail_the_request(model):
    for block in ("E2", "E3", "E5", "E6"):
        answer(block, error="down")
    (response,) = run(model(), request())  # 7 others answer: enough for 6
    assert not response.has_error()
    answer("E7", error="down")
    answer("E8", error="down")
    (response,) = run(model(), request())
    assert response.error().code() == pb.TritonError.UNAVAILABLE
    assert response.error().message() == (
        "only 5 embedders besides E1 answered within 5000 ms; 6 are needed "
        "(missing: E2, E3, E5, E6, E7, E8)")


def test_the_caller_s_presence_is_kept_and_a_missing_block_removed(model):
    answer("E12", error="down")
    presence = np.ones((ROWS, 12), dtype=bool)
    presence[0, 1] = False
    focus = np.ones((ROWS, 12), dtype=np.float32)
    (response,) = run(model(), request(PRESENCE=presence, FOCUS=focus,
                                       TOP_K=np.array([[3], [4]], dtype=np.int64)))
    assert not response.has_error()
    given = fused_inputs()
    want = presence.copy()
    want[:, 11] = False
    np.testing.assert_array_equal(given["PRESENCE"], want)
    np.testing.assert_array_equal(given["FOCUS"], focus)
    assert given["TOP_K"].tolist() == [[3], [4]]
    assert "TEMPERATURE" not in given


@pytest.mark.parametrize(("extra", "texts", "message"), [
    ({}, ("ok", " "), "TEXT[1]: empty or whitespace-only text"),
    ({"TOP_K": np.array([[9], [1]], dtype=np.int64)}, ("a", "b"), "TOP_K[0]: 9 is outside 1..8"),
    ({"KIND": np.array([[b"query"], [b"other"]], dtype=np.object_)}, ("a", "b"),
     "KIND: must be 'query' or 'passage', got 'other'"),
    ({"PRESENCE": np.ones((3, 12), dtype=bool)}, ("a", "b"), "PRESENCE: 3 rows for 2 texts"),
])
def test_the_caller_s_mistakes_are_invalid_arg_before_any_step_runs(model, extra, texts,
                                                                       message):
    (response,) = run(model(), request(texts, **extra))
    assert response.error().code() == pb.TritonError.INVALID_ARG
    assert response.error().message() == message
    assert pb.CALLS == []


def test_text_and_timestamp_are_required(model):
    bare = pb.InferenceRequest(inputs=[pb.Tensor("TEXT", np.array([[b"a"]], dtype=np.object_))])
    (response,) = run(model(), bare)
    assert response.error().code() == pb.TritonError.INVALID_ARG
    assert response.error().message() == "TEXT and TIMESTAMP are required"


def test_without_truncation_a_text_over_a_token_limit_is_refused(model):
    # Tokens are counted on the cleaned text ("clean " + the text): 8 words and [CLS] [SEP]
    # are 10, over every limit of 8, and E1's passage prefix makes 12.
    long = "one two three four five six seven"
    (response,) = run(model(), request(("short", long),
                                       TRUNCATE=np.array([[False], [False]])))
    assert response.error().code() == pb.TritonError.INVALID_ARG
    assert response.error().message() == (
        "TEXT[1]: 12 tokens exceed the 8-token limit of E1 (e01_semantic); send TRUNCATE=true "
        "to truncate")
    # At the limit: 4 words, [CLS] [SEP] and E1's prefix are 8 tokens; one word more is not.
    (response,) = run(model(), request(("short", "one two three"),
                                       TRUNCATE=np.array([[False], [False]])))
    assert not response.has_error()
    (response,) = run(model(), request(("one two three four", "short"),
                                       TRUNCATE=np.array([[False], [False]])))
    assert response.error().message().startswith("TEXT[0]: 9 tokens exceed the 8-token limit "
                                                  "of E1")
    (response,) = run(model(), request(("short", long), TRUNCATE=np.array([[True], [True]])))
    assert not response.has_error()


def test_a_breaker_opens_after_repeated_failures_and_then_skips_the_block(model):
    answer("E5", error="down")
    m = model(breaker_failures="2", breaker_cooldown_ms="60000")
    for _ in range(2):
        run(m, request())
    calls = len(sent("e05_causal"))
    (response,) = run(m, request())
    assert not response.has_error()
    assert len(sent("e05_causal")) == calls  # skipped: not called at all
    j = [e.id for e in EMBEDDERS].index("E5")
    assert response.outputs()["MISSING"][:, j].all()
    assert pb.METRICS[("fusedembed_breaker_state", (("block", "E5"),))] == 1.0
    assert pb.METRICS[("fusedembed_breaker_transitions_total",
                       (("block", "E5"), ("to", "open")))] == 1.0
    assert ("warn", "E5: circuit breaker closed -> open") in pb.LOG
    assert missing_counter("E5") == 3 * ROWS


def test_requests_of_one_batch_are_answered_each_on_its_own(model):
    good, bad = request(("fine",) * 2), request(("fine", "\t"))
    answers = run(model(), good, bad)
    assert not answers[0].has_error()
    assert answers[1].error().message() == "TEXT[1]: empty or whitespace-only text"


def test_the_settings_come_from_the_config_parameters(model):
    m = model(required="E1,E11", min_other_blocks="5", deadline_ms="1500",
              breaker_window_ms="2500", breaker_cooldown_ms="750", breaker_failures="4",
              breaker_probes="3")
    assert m.required == ["E1", "E11"] and m.min_others == 5 and m.deadline_s == 1.5
    settings = m.breakers["E3"].settings
    assert (settings.failures, settings.window_s, settings.cooldown_s, settings.probes) == (
        4, 2.5, 0.75, 3)
    assert pb.FAMILIES["fusedembed_failsafe_missing_blocks_total"] == (
        pb.MetricFamily.COUNTER, ("Blocks (one per text) the fail-safe fused without: their "
                                  "embedder failed or missed the deadline"))
    answer("E11", error="down")
    (response,) = run(m, request())
    assert response.error().message() == (
        "E11 is required and did not answer: e11_entity: down")


def test_a_required_block_s_open_breaker_says_so(model):
    answer("E1", error="down")
    m = model(breaker_failures="2", breaker_cooldown_ms="60000")
    run(m, request())
    run(m, request())
    (response,) = run(m, request())
    assert response.error().message() == (
        "E1 is required and did not answer: skipped: its circuit breaker is open")


def test_a_breaker_closes_after_its_probes_succeed(model):
    answer("E5", error="down")
    m = model(breaker_failures="2", breaker_cooldown_ms="50", breaker_probes="2")
    run(m, request())
    run(m, request())
    assert pb.METRICS[("fusedembed_breaker_state", (("block", "E5"),))] == 1.0
    answer("E5")
    import time
    time.sleep(0.1)
    for _ in range(3):
        (response,) = run(m, request())
    assert pb.METRICS[("fusedembed_breaker_state", (("block", "E5"),))] == 0.0
    assert not response.outputs()["MISSING"].any()


def test_every_answering_block_is_waited_for_not_only_the_required_one(model):
    answer("E11", delay_s=0.1)  # slower than E1, well inside the deadline
    (response,) = run(model(), request())
    assert not response.outputs()["MISSING"].any()


def test_the_deadline_counts_from_the_request_s_start(model):
    async def slow_preprocess(given, outputs):
        await asyncio.sleep(0.3)
        return await clean(given, outputs)
    clean = pb.HANDLERS[r.PREPROCESS_MODEL]
    pb.HANDLERS[r.PREPROCESS_MODEL] = slow_preprocess
    answer("E9", delay_s=0.3)  # in time for a deadline counted from the blocks' start only
    (response,) = run(model(deadline_ms="500"), request())
    j = [e.id for e in EMBEDDERS].index("E9")
    assert response.outputs()["MISSING"][:, j].all()


def test_the_caller_s_truncate_goes_to_every_token_embedder(model):
    truncate = np.array([[True], [True]])
    run(model(), request(TRUNCATE=truncate))
    for spec in EMBEDDERS:
        if spec.input is Input.TOKENS:
            (given,) = sent(spec.triton_model)
            np.testing.assert_array_equal(given["TRUNCATE"], truncate)


def test_a_block_without_a_flag_is_not_truncated_and_a_missing_block_is_float_zeros(model):
    spec = IDS["E12"]

    async def no_flag(given, outputs):
        return {r.EMBEDDING: block_value(spec, given[r.INPUT_IDS].shape[0])}
    pb.HANDLERS[spec.triton_model] = no_flag
    answer("E6", error="down")
    (response,) = run(model(), request())
    given = fused_inputs()
    flag = given[spec.block_name + r.TRUNCATED_SUFFIX]
    assert flag.dtype == bool and flag.shape == (ROWS, 1) and not flag.any()
    # E12 answered (its block is fused, not filled); only E6 is missing.
    np.testing.assert_array_equal(given[spec.block_name], block_value(spec, ROWS))
    assert [e.id for e, gone in zip(EMBEDDERS, response.outputs()["MISSING"][0], strict=True)
            if gone] == ["E6"]
    missing = given[IDS["E6"].block_name]
    assert missing.dtype == np.float32 and missing.shape == (ROWS, IDS["E6"].dim)
    cut = given[IDS["E6"].block_name + r.TRUNCATED_SUFFIX]
    assert cut.dtype == bool and cut.shape == (ROWS, 1)


def test_exactly_the_minimum_of_other_blocks_is_enough(model):
    for block in ("E2", "E3", "E5", "E6", "E7"):
        answer(block, error="down")
    (response,) = run(model(), request())  # 6 others: exactly the minimum
    assert not response.has_error()
    (response,) = run(model(required="E1,E11", min_other_blocks="6"), request())
    assert response.error().message().startswith("only 5 embedders besides E1, E11 answered")


@pytest.mark.parametrize(("extra", "message"), [
    ({"SESSION": np.array([[b"s" * 257], [b"t"]], dtype=np.object_)},
     "SESSION[0]: 257 bytes exceed the limit of 256 bytes"),
    ({"SEQUENCE": np.array([[1], [-1]], dtype=np.int64)}, "SEQUENCE[1]: -1 is outside"),
    ({"TEMPERATURE": np.array([[1.0], [0.01]], dtype=np.float32)}, "TEMPERATURE[1]: "),
    ({"FOCUS": np.full((2, 12), -1.0, dtype=np.float32)}, "FOCUS[0][0] (E1): -1.0 is outside"),
])
def test_every_optional_input_is_checked_before_any_step(model, extra, message):
    (response,) = run(model(), request(**extra))
    assert response.error().code() == pb.TritonError.INVALID_ARG
    assert response.error().message().startswith(message)
    assert pb.CALLS == []


def test_every_token_embedder_s_limit_is_checked_by_its_own_kind(model, tmp_path):
    no = np.array([[False], [False]])
    # "clean one two three": 4 words and [CLS] [SEP] are 6 tokens; E1 adds 2 to a passage
    # (8: at its limit) and 3 to a query (9: over it).
    (response,) = run(model(), request(("short", "one two three"), TRUNCATE=no,
                                       KIND=np.array([[b"passage"], [b"query"]],
                                                     dtype=np.object_)))
    assert response.error().message() == (
        "TEXT[1]: 9 tokens exceed the 8-token limit of E1 (e01_semantic); send TRUNCATE=true "
        "to truncate")
    (response,) = run(model(), request(("short", "one two three"), TRUNCATE=no))
    assert not response.has_error()
    # A later token embedder's own limit (E7 after the custom E2-E4) is checked too.
    (tmp_path / "e07_code" / "1" / "build.json").write_text(json.dumps({"max_length": 5}))
    (response,) = run(model(), request(("short", "one two three"), TRUNCATE=no))
    assert response.error().message() == (
        "TEXT[1]: 6 tokens exceed the 5-token limit of E7 (e07_code); send TRUNCATE=true to "
        "truncate")


def test_a_block_that_answers_without_its_embedding_is_missing(model):
    spec = IDS["E7"]

    async def no_embedding(given, outputs):
        return {r.FLAG: np.zeros((given[r.INPUT_IDS].shape[0], 1), dtype=bool)}
    pb.HANDLERS[spec.triton_model] = no_embedding
    (response,) = run(model(), request())
    assert not response.has_error()
    j = [e.id for e in EMBEDDERS].index("E7")
    assert response.outputs()["MISSING"][:, j].all()
    (response,) = run(model(required="E1,E7"), request())
    assert response.error().message() == (
        f"E7 is required and did not answer: e07_code: its answer has no {r.EMBEDDING}")


def _open(m, block: str) -> None:
    """Two failures open ``block``'s breaker (breaker_failures=2)."""
    answer(block, error="down")
    run(m, request())
    run(m, request())
    assert pb.METRICS[("fusedembed_breaker_state", (("block", block),))] == 1.0


def test_a_slow_probe_of_an_optional_block_is_not_waited_for(model):
    """After the cool-down one request probes E5; the others answered, so the request goes
    on without it (E5 missing), and the probe still settles the breaker when it ends."""
    import time

    m = model(breaker_failures="2", breaker_cooldown_ms="50", breaker_probes="1",
              deadline_ms="2000")
    _open(m, "E5")
    time.sleep(0.1)
    answer("E5", delay_s=0.5)
    begun = time.monotonic()
    (response,) = run(m, request())
    assert time.monotonic() - begun < 0.4  # not held by the probe
    assert not response.has_error()
    j = [e.id for e in EMBEDDERS].index("E5")
    assert response.outputs()["MISSING"][:, j].all()


def test_a_required_block_s_probe_is_waited_for(model):
    """A probe of a required block is awaited: the request fails only if it fails."""
    import time

    m = model(breaker_failures="2", breaker_cooldown_ms="50", breaker_probes="1",
              deadline_ms="2000")
    _open(m, "E1")
    time.sleep(0.1)
    answer("E1", delay_s=0.2)
    (response,) = run(m, request())
    assert not response.has_error(), response.error().message()
    assert not response.outputs()["MISSING"].any()
    assert pb.METRICS[("fusedembed_breaker_state", (("block", "E1"),))] == 0.0

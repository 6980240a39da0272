import numpy as np
import pytest

from fusedembed_client import MODEL, FusedEmbedClient, FusedEmbedError


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_unreachable_server_is_a_clear_error(protocol):
    with pytest.raises(FusedEmbedError, match=r"fused_text at 127\.0\.0\.1:9"):
        FusedEmbedClient("127.0.0.1:9", protocol, timeout_s=2).embed("x", 0)


def test_unknown_protocol_and_mismatched_timestamps_are_rejected():
    with pytest.raises(ValueError, match="protocol"):
        FusedEmbedClient(protocol="tcp")
    with pytest.raises(ValueError, match="2 texts but 1 timestamps"):
        FusedEmbedClient("127.0.0.1:9").embed_batch(["a", "b"], [1])


def test_gate_controls_become_one_row_per_optional_input():
    from fusedembed_client import GateControls

    assert GateControls().tensors() == {}
    t = GateControls(top_k=3, temperature=0.5, focus={"E11": 2.0}, missing=("E6",)).tensors()
    assert t["TOP_K"][0] == "INT32" and t["TOP_K"][1].tolist() == [3]
    assert t["TEMPERATURE"][0] == "FP32" and t["TEMPERATURE"][1].tolist() == [0.5]
    assert t["FOCUS"][1].tolist() == [1.0] * 10 + [2.0, 1.0]
    assert t["PRESENCE"][0] == "BOOL" and t["PRESENCE"][1].tolist() == [True] * 5 + [False] + [True] * 6
    with pytest.raises(ValueError, match="unknown block 'E13'"):
        GateControls(focus={"E13": 1.0}).tensors()


class Refusing:
    """Stands in for tritonclient's client: answers with the queued statuses, then a result."""

    def __init__(self, statuses, result="result"):
        from tritonclient.utils import InferenceServerException

        self.errors = [InferenceServerException(f"refused ({s})", status=s) for s in statuses]
        self.result = result
        self.calls = 0

    def infer(self, *args, **kwargs):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def _client(statuses, retry):
    from fusedembed_client import Retry

    client = FusedEmbedClient("127.0.0.1:9", retry=Retry(**retry))
    client._client = Refusing(statuses)
    return client


@pytest.mark.parametrize("busy", ["503", "429", "StatusCode.UNAVAILABLE"])
def test_back_pressure_is_retried_with_back_off(busy):
    import time

    client = _client([busy, busy], {"first_s": 0.05})
    start = time.monotonic()
    assert client._send(MODEL, [], []) == "result"
    assert client._client.calls == 3 and client.retries == 2
    assert time.monotonic() - start >= 0.05 * 0.5 + 0.1 * 0.5  # it slept between the tries


@pytest.mark.parametrize("status", ["400", "StatusCode.INVALID_ARGUMENT", "500",
                                    "StatusCode.INTERNAL"])
def test_client_errors_and_faults_are_never_retried(status):
    client = _client([status], {"first_s": 0.01})
    with pytest.raises(FusedEmbedError, match="refused") as err:
        client._send(MODEL, [], [])
    assert err.value.status == status and not err.value.retryable
    assert client._client.calls == 1 and client.retries == 0


def test_retries_stop_at_the_attempts_and_at_the_deadline():
    client = _client(["503"] * 10, {"attempts": 3, "first_s": 0.01})
    with pytest.raises(FusedEmbedError) as err:
        client._send(MODEL, [], [])
    assert err.value.retryable and client._client.calls == 3
    slow = _client(["503"] * 10, {"attempts": 10, "first_s": 0.4, "deadline_s": 0.5})
    with pytest.raises(FusedEmbedError):
        slow._send(MODEL, [], [])
    assert slow._client.calls <= 3  # 0.2..0.4 s, then 0.4..0.8 s would pass the deadline


def test_the_client_and_its_cli_import_without_the_gateway_extra():
    """The plain client installs with tritonclient and numpy only: nothing of the gateway
    (Starlette, uvicorn, pydantic, orjson, prometheus_client) is imported by it."""
    import subprocess
    import sys

    code = ("import sys, fusedembed_client, fusedembed_client.cli; "
            "print(sorted({'starlette', 'uvicorn', 'pydantic', 'orjson', 'prometheus_client'} "
            "& {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_binary_helpers_give_the_sign_dot_product_below_zero_too():
    from fusedembed_client import decode_binary, hamming

    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 64))
    bits = np.packbits(v > 0, axis=1)
    opposite = np.packbits(-v > 0, axis=1)
    signs = decode_binary(bits, 64)
    assert (64 - 2 * hamming(bits, opposite) == -64).all()
    np.testing.assert_array_equal(64 - 2 * hamming(bits[:, None], bits[None]), signs @ signs.T)


class Answering:
    """Stands in for tritonclient's client: records what was asked and answers ``outputs``."""

    def __init__(self, outputs: dict[str, np.ndarray]):
        self.outputs = outputs
        self.asked: list[tuple[str, list[str]]] = []

    def infer(self, model, inputs, outputs, **kwargs):
        self.asked.append((model, [o.name() for o in outputs]))
        return self

    def as_numpy(self, name):
        return self.outputs[name]


def test_the_failsafe_entry_asks_for_its_own_outputs_and_names_the_blocks_left_out():
    """fused_text_failsafe has no TOKENS, blocks or encoded outputs: the client asks for
    what it serves and reads MISSING into Embedding.missing."""
    from fusedembed_client import FAILSAFE_MODEL

    fused = np.eye(2, 1536, dtype=np.float32)
    missing = np.zeros((2, 12), dtype=bool)
    missing[1, [7, 10]] = True  # E8, E11
    cut = np.zeros((2, 12), dtype=bool)
    cut[0, 0] = True
    redactions = np.zeros((2, 7), dtype=np.int32)
    redactions[0, 0] = 2
    answer = Answering({
        "FUSED": fused, "EXPERT_WEIGHTS": np.full((2, 8), 0.125, dtype=np.float32),
        "SELECTED_EXPERTS": np.array([[3, 5], [1, -1]], dtype=np.int32),
        "TRUNCATED": cut, "REDACTIONS": redactions,
        "FUSION_VERSION": np.array([[b"v1"], [b"v1"]], dtype=object), "MISSING": missing})
    client = FusedEmbedClient("127.0.0.1:9", model=FAILSAFE_MODEL)
    client._client = answer
    got = client.embed_batch(["a", "b"], [1, 2])
    model, asked = answer.asked[0]
    assert model == FAILSAFE_MODEL and "TOKENS" not in asked and "MISSING" in asked
    assert got[0].missing == () and got[1].missing == ("E8", "E11")
    assert got[1].to_dict()["missing"] == ["E8", "E11"] and "missing" not in got[0].to_dict()
    assert got[0].truncated == ("E1",) and got[0].redactions == {"EMAIL": 2}
    assert got[1].selected_experts.tolist() == [1] and got[0].fusion_version == "v1"
    np.testing.assert_array_equal(got[1].vector, fused[1])
    for asking in ({"blocks": ["E1"]}, {"sparse": True}, {"dimensions": 256},
                   {"encoding": "int8"}, {"token_vectors": True}):
        with pytest.raises(ValueError, match="fused_text_failsafe answers the full float"):
            client.embed_batch(["a"], [1], **asking)

import pytest

from fusedembed_client import FusedEmbedClient, FusedEmbedError


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

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

"""fused_text_cached on the real server: a repeat is answered from Triton's response cache
with the same vector fused_text computes; other inputs or controls are other entries."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient

from fusedembed_client import CACHED_MODEL, FusedEmbedClient, FusedEmbedError, GateControls

pytestmark = pytest.mark.server

T0 = 1_700_000_000


def cache_counts(server) -> tuple[int, int]:
    """(hits, misses) of the cached entry point, from Triton's statistics."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics(CACHED_MODEL)["model_stats"][0]
    finally:
        client.close()
    s = stats["inference_stats"]
    return int(s["cache_hit"]["count"]), int(s["cache_miss"]["count"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_repeat_is_a_cache_hit_with_the_same_vector(server, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    text = f"a repeated request over {protocol}"
    with FusedEmbedClient(url, protocol, model=CACHED_MODEL) as cached, \
            FusedEmbedClient(url, protocol) as plain:
        hits, misses = cache_counts(server)
        first = cached.embed(text, T0)
        assert cache_counts(server) == (hits, misses + 1)
        second = cached.embed(text, T0)
        assert cache_counts(server) == (hits + 1, misses + 1)
        computed = plain.embed(text, T0)
    assert first.vector.shape == (1536,)
    np.testing.assert_array_equal(first.vector, second.vector)
    np.testing.assert_allclose(first.vector, computed.vector, atol=1e-6)


def test_other_timestamps_and_controls_are_other_entries(server):
    text = "same text, other inputs"
    with FusedEmbedClient(server.http_url, model=CACHED_MODEL) as cached:
        base = cached.embed(text, T0)
        hits, misses = cache_counts(server)
        cached.embed(text, T0 + 86_400)
        steered = cached.embed(text, T0, gate=GateControls(top_k=1))
        assert cache_counts(server) == (hits, misses + 2)
        with FusedEmbedClient(server.http_url) as plain:
            expected = plain.embed(text, T0, gate=GateControls(top_k=1))
    assert base.vector.shape == (1536,)
    np.testing.assert_allclose(steered.vector, expected.vector, atol=1e-6)


def test_an_error_is_never_cached(server):
    """A refused request sent twice is refused twice and never counted as a cache hit, while
    a valid request sent twice in the same test is (the counters do see caching)."""
    with FusedEmbedClient(server.http_url, model=CACHED_MODEL) as cached:
        hits, _ = cache_counts(server)
        for _ in range(2):
            with pytest.raises(FusedEmbedError, match="TIMESTAMP"):
                cached.embed("an error is not cached", 9_999_999_999)
        assert cache_counts(server)[0] == hits
        for _ in range(2):
            cached.embed("a valid text is cached", T0)
        assert cache_counts(server)[0] == hits + 1
        with pytest.raises(ValueError, match="FUSED only"):
            cached.embed("fine text", T0, blocks=("E11",))

"""Client for the fusedembed Triton service: one text in, one fused 1536-D vector out."""

from fusedembed_client.client import (
    CACHED_MODEL,
    FAILSAFE_MODEL,
    MODEL,
    Embedding,
    FusedEmbedClient,
    FusedEmbedError,
    GateControls,
    Retry,
    SparseTerms,
    decode_binary,
    decode_int8,
    hamming,
    int8_similarity,
    maxsim,
)

__all__ = ["CACHED_MODEL", "FAILSAFE_MODEL", "MODEL", "Embedding", "FusedEmbedClient",
           "FusedEmbedError", "GateControls", "Retry", "SparseTerms", "decode_binary",
           "decode_int8", "hamming", "int8_similarity", "maxsim"]

"""Client for the fusedembed Triton service: one text in, one fused 1536-D vector out."""

from fusedembed_client.client import Embedding, FusedEmbedClient, FusedEmbedError, GateControls

__all__ = ["Embedding", "FusedEmbedClient", "FusedEmbedError", "GateControls"]

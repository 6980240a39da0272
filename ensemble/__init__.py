"""FuseMoE, its weights, the in-process pipeline and the Triton adapters."""

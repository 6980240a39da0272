"""Triton Python-backend adapters: thin wrappers over the math in export/ and ensemble/."""

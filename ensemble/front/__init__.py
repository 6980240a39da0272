"""The public front: what listens on the service's HTTP and gRPC ports.

Triton itself listens on loopback only, on ports of its own; one front process per protocol
(``python -m ensemble.front http|grpc``) takes the public port and passes each request on.
Inference requests are checked first (``checks``): a request whose declared shapes do not
match its data, its model's config or its limits is answered 400 / INVALID_ARGUMENT here and
never reaches Triton, whose own front crashes or answers 500 on such requests. Every other
API (health, metadata, config, statistics, the repository and shared-memory APIs behind the
admin key) passes through unchanged.

A request that reaches Triton is completed there even when its client goes away: the front
never cancels it (a cancellation mid-ensemble stalls or kills Triton 2.51); its answer is
dropped.
"""

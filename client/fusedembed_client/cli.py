"""``fusedembed embed TEXT`` (or ``--image PATH``): print the fused vector the server returns
for one text or image.
``fusedembed info``: the models the server runs and the weights each serves.
``fusedembed gateway``: the OpenAI-compatible HTTP gateway (the ``gateway`` extra)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from fusedembed_client.client import FusedEmbedClient, FusedEmbedError, GateControls


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusedembed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="embed one text, or one image with --image")
    embed.add_argument("text", nargs="?")
    embed.add_argument("--image", metavar="PATH",
                       help="embed this image (PNG, JPEG, WebP, GIF, BMP) with fused_image")
    embed.add_argument("--timestamp", type=int, default=None,
                       help="Unix seconds (default: now)")
    embed.add_argument("--url", default=os.environ.get("FUSEDEMBED_URL"),
                       help="host:port (default 127.0.0.1:8000 for http, :8001 for grpc)")
    embed.add_argument("--protocol", choices=("http", "grpc"), default="http")
    embed.add_argument("--kind", choices=("passage", "query"), default="passage",
                       help="what the text is for (E1 and E12 differ); default passage")
    embed.add_argument("--block", action="append", default=[], metavar="E<n>",
                       help="also return this embedder's block (repeatable)")
    embed.add_argument("--no-truncate", action="store_true",
                       help="refuse a text over any model's token limit instead of cutting it")
    embed.add_argument("--top-k", type=int, help="experts mixed, 1..8 (server default 2)")
    embed.add_argument("--temperature", type=float, help="gate temperature, 0.05..20 (default 1)")
    embed.add_argument("--focus", action="append", default=[], metavar="E<n>=W",
                       help="multiply a block by W >= 0 before gating (repeatable)")
    embed.add_argument("--missing", action="append", default=[], metavar="E<n>",
                       help="fuse without this block (repeatable)")
    embed.add_argument("--sparse", action="store_true",
                       help="also return E6's SPLADE terms (vocabulary ids and weights)")
    embed.add_argument("--sparse-top-k", type=int, metavar="K",
                       help="with --sparse: only the K heaviest terms")
    embed.add_argument("--session", help="E4's session id (default: the shared session)")
    embed.add_argument("--sequence", type=int,
                       help="E4's position in the session (default: the timestamp)")
    embed.add_argument("--tokens", action="store_true",
                       help="also return E12's ColBERT token vectors (128-D each)")
    embed.add_argument("--dimensions", type=int, metavar="D",
                       help="FUSED's Matryoshka size (one the served checkpoint offers)")
    embed.add_argument("--encoding", choices=("float", "int8", "binary"), default="float",
                       help="FUSED as int8 codes or packed sign bits (default float)")
    embed.add_argument("--json", action="store_true", help="print the whole result as JSON")
    info = sub.add_parser("info", help="show each model and whether its weights are pretrained")
    info.add_argument("--url", default=os.environ.get("FUSEDEMBED_URL"))
    info.add_argument("--protocol", choices=("http", "grpc"), default="http")
    gateway = sub.add_parser("gateway", help="serve /v1/embeddings, /embed, /health, /info "
                             "and /metrics over HTTP in front of Triton's gRPC endpoint")
    gateway.add_argument("--triton-url", help="Triton's gRPC host:port (default "
                         "FUSEDEMBED_GATEWAY_TRITON_URL or 127.0.0.1:8001)")
    gateway.add_argument("--host", help="address to bind (default FUSEDEMBED_HOST or 127.0.0.1)")
    gateway.add_argument("--port", type=int, help="port (default GATEWAY_PORT or 8080)")
    gateway.add_argument("--max-inflight-texts", type=int,
                         help="texts embedded at once before 429 (default 2048)")
    gateway.add_argument("--max-inflight-bytes", type=int,
                         help="bytes of bodies served at once before 429 (default 64 MiB)")
    gateway.add_argument("--max-body-bytes", type=int, help="largest body, else 413 (8 MiB)")
    gateway.add_argument("--timeout-s", type=float, help="longest wait for vectors, else 504 (60)")
    gateway.add_argument("--api-key-file", help="file holding the key every route but /health "
                         "then needs as 'Authorization: Bearer <key>' (else 401); the key "
                         "itself only from FUSEDEMBED_GATEWAY_API_KEY, never on the command "
                         "line, where ps shows it")
    gateway.add_argument("--access-log", action="store_const", const=True,
                         help="log one line per answer with its request id and trace id "
                              "(default FUSEDEMBED_GATEWAY_ACCESS_LOG; 5xx answers always)")
    return parser


def _gateway(args: argparse.Namespace) -> int:
    import dataclasses

    try:
        from fusedembed_client.gateway import Settings, serve
        from fusedembed_client.gateway.tracing import TraceSettings
    except ImportError as err:
        print(f"error: {err.name} is missing; install fusedembed-client[gateway]",
              file=sys.stderr)
        return 1
    given = {k: v for k, v in vars(args).items()
             if k in {f.name for f in dataclasses.fields(Settings)} and v is not None}
    try:
        settings = dataclasses.replace(Settings.from_env(), **given).checked()
        tracing = TraceSettings.from_env()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    traces = (f"traces to {tracing.endpoint}, {tracing.share:g} of requests" if tracing.enabled
              else "no traces")
    print(f"fusedembed gateway on http://{settings.host}:{settings.port} "
          f"(Triton gRPC {settings.triton_url}; "
          f"{'an API key' if settings.api_key else 'no key'} required; {traces})", flush=True)
    serve(settings)
    return 0


def _info(client: FusedEmbedClient) -> int:
    models = client.models()
    width = max(len(m.name) for m in models)
    for m in models:
        print(f"{m.name:<{width}}  {m.weights:<10}  {m.precision or '-':<5}  {m.source}")
    neural = [m for m in models if m.block and m.weights in ("pretrained", "tiny", "full")]
    pretrained = [m.block for m in neural if m.weights == "pretrained"]
    print(f"{len(pretrained)} of {len(neural)} neural embedders serve pretrained weights"
          + (f": {', '.join(pretrained)}" if pretrained else ""))
    return 0


def _gate(args: argparse.Namespace) -> GateControls:
    focus = {}
    for item in args.focus:
        block, sep, weight = item.partition("=")
        if not sep:
            raise ValueError(f"--focus {item!r}: expected E<n>=W")
        focus[block] = float(weight)
    return GateControls(args.top_k, args.temperature, focus or None, tuple(args.missing))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "gateway":
        return _gateway(args)
    try:
        with FusedEmbedClient(args.url, args.protocol) as client:
            if args.command == "info":
                return _info(client)
            if (args.text is None) == (args.image is None):
                raise ValueError("give a TEXT or --image PATH (one of the two)")
            if args.image is not None:
                text_only = [f for f, on in (("--kind", args.kind != "passage"),
                                             ("--block", args.block), ("--sparse", args.sparse),
                                             ("--sparse-top-k", args.sparse_top_k is not None),
                                             ("--tokens", args.tokens),
                                             ("--dimensions", args.dimensions is not None),
                                             ("--encoding", args.encoding != "float")) if on]
                if text_only:
                    raise ValueError(f"{', '.join(text_only)}: for texts only, not --image")
                result = client.embed_image(args.image, args.timestamp, args.session,
                                            args.sequence)
            else:
                result = client.embed(args.text, args.timestamp, args.kind, args.block,
                                      not args.no_truncate, _gate(args),
                                      args.sparse or args.sparse_top_k is not None,
                                      args.sparse_top_k, args.tokens, args.session,
                                      args.sequence, args.dimensions, args.encoding)
            words = client.terms(result.sparse.indices) if result.sparse is not None else []
    except (FusedEmbedError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        out = result.to_dict()
        if result.sparse is not None:
            out["sparse"]["terms"] = words
        print(json.dumps(out))
        return 0
    v = result.vector
    head = np.array2string(v[:8], precision=4, separator=", ")
    print(f"FUSED: {v.shape[0]}-D, L2 norm {np.linalg.norm(v):.6f}")
    print(f"  first values: {head} ...")
    if result.codes is not None:
        codes = np.array2string(result.codes[:8], separator=", ")
        print(f"FUSED_{result.encoding.upper()}: {result.codes.nbytes} bytes, first {codes} ... "
              "(FUSED above is their decoding)")
    print(f"SELECTED_EXPERTS: {result.selected_experts.tolist()}")
    print(f"FUSION_VERSION: {result.fusion_version}")
    print("EXPERT_WEIGHTS: [" + ", ".join(f"{w:.4f}" for w in result.expert_weights) + "]")
    if result.truncated:
        print(f"TRUNCATED: {', '.join(result.truncated)}")
    if result.redactions:
        print("REDACTIONS: " + ", ".join(f"{k} {v}" for k, v in result.redactions.items()))
    for name, block in result.blocks.items():
        print(f"{name}: {block.shape[0]}-D, L2 norm {np.linalg.norm(block):.6f}")
    if result.sparse is not None:
        order = np.argsort(-result.sparse.weights, kind="stable")
        top = ", ".join(f"{words[i]} {result.sparse.weights[i]:.3f}" for i in order[:10])
        print(f"E6 SPARSE: {len(order)} terms; heaviest: {top}")
    if result.token_vectors is not None:
        norms = np.linalg.norm(result.token_vectors, axis=1)
        span = f", L2 norms {norms.min():.6f} .. {norms.max():.6f}" if norms.size else ""
        print(f"E12 TOKENS: {result.token_vectors.shape[0]} vectors of "
              f"{result.token_vectors.shape[1]}-D{span}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

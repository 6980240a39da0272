"""python -m ensemble.front {http,grpc} --listen HOST:PORT --triton-http H:P [--triton-grpc H:P]"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from export.registry import LIMITS


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemble.front", description=__doc__)
    parser.add_argument("protocol", choices=("http", "grpc"))
    parser.add_argument("--listen", required=True, help="public HOST:PORT")
    parser.add_argument("--triton-http", required=True, help="Triton's loopback HTTP")
    parser.add_argument("--triton-grpc", help="Triton's loopback gRPC (grpc only)")
    parser.add_argument("--max-body-bytes", type=int, default=LIMITS.max_request_bytes,
                        help="largest request body or gRPC message (default: the largest "
                             "valid request, registry Limits.max_request_bytes)")
    parser.add_argument("--max-held-bytes", type=int, default=2 * LIMITS.max_request_bytes,
                        help="request bodies (gRPC: inference messages) held at once, past "
                             "which a request is refused with 503 / UNAVAILABLE (default: two "
                             "of the largest)")
    parser.add_argument("--max-abandoned", type=int, default=8,
                        help="inference requests whose clients gave up that may still run in "
                             "Triton (never cancelled); past it new ones are refused with 503 "
                             "/ UNAVAILABLE until some end (default 8)")
    parser.add_argument("--verdict", type=Path,
                        help="the launcher's liveness verdict (http): /v2/health/live is 503 "
                             "while it reports a stall or stops reporting")
    args = parser.parse_args(argv)
    host, port = split(args.listen)
    if args.protocol == "http":
        import uvloop
        from aiohttp import web

        from ensemble.front.http_front import HttpFront

        uvloop.install()
        web.run_app(HttpFront(args.triton_http, args.max_body_bytes,
                              args.max_held_bytes, args.verdict,
                              args.max_abandoned).app(), host=host,
                    port=port, print=None, access_log=None, handle_signals=True)
        return 0
    if not args.triton_grpc:
        parser.error("grpc needs --triton-grpc")
    from ensemble.front.grpc_front import GrpcFront

    front = GrpcFront(args.triton_grpc, args.triton_http, args.max_body_bytes,
                      args.max_held_bytes, args.max_abandoned)
    try:
        asyncio.run(front.serve(host, port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``fusedembed embed TEXT``: print the fused vector the server returns for one text."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from fusedembed_client.client import FusedEmbedClient, FusedEmbedError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusedembed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="embed one text")
    embed.add_argument("text")
    embed.add_argument("--timestamp", type=int, default=None,
                       help="Unix seconds (default: now)")
    embed.add_argument("--url", default=os.environ.get("FUSEDEMBED_URL"),
                       help="host:port (default 127.0.0.1:8000 for http, :8001 for grpc)")
    embed.add_argument("--protocol", choices=("http", "grpc"), default="http")
    embed.add_argument("--json", action="store_true", help="print the whole result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with FusedEmbedClient(args.url, args.protocol) as client:
            result = client.embed(args.text, args.timestamp)
    except FusedEmbedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    v = result.vector
    head = np.array2string(v[:8], precision=4, separator=", ")
    print(f"FUSED: {v.shape[0]}-D, L2 norm {np.linalg.norm(v):.6f}")
    print(f"  first values: {head} ...")
    print(f"SELECTED_EXPERTS: {result.selected_experts.tolist()}")
    print("EXPERT_WEIGHTS: [" + ", ".join(f"{w:.4f}" for w in result.expert_weights) + "]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

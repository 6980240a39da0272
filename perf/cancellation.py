"""Does the service survive gRPC deadlines that expire mid-request?

    python -m perf.cancellation [--rounds 10] [--direct]

Each round sends eight gRPC requests of 32 texts to fused_text with deadlines of 1 ms to
300 ms (tritonclient's ``client_timeout``), then one plain request with a 60 s deadline; it
stops at the first round after which the server no longer answers. Exit status 1 when that
happens. Through the public gRPC port (the front, the default) an expired call is not
cancelled in Triton. ``--direct`` sends the same to Triton's own loopback gRPC, where Triton
2.51 (the nvidia-pytriton wheel's) cancels such requests mid-ensemble and can die or stall a
queue (fixed upstream in triton-inference-server/server#7840, 2.53, and #8078, 2.57).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys

import numpy as np

from perf.workload import RUN, T0, started_server

DEADLINES_S = (0.001, 0.002, 0.005, 0.02, 0.05, 0.1, 0.3, 0.001)


def infer(url: str, texts: list[str], deadline_s: float) -> str:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    inputs = [grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES"),
              grpcclient.InferInput("TIMESTAMP", [len(texts), 1], "INT64")]
    inputs[0].set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.full((len(texts), 1), T0, dtype=np.int64))
    try:
        client.infer("fused_text", inputs, outputs=[grpcclient.InferRequestedOutput("FUSED")],
                     client_timeout=deadline_s)
        return "answered"
    except Exception as err:  # noqa: BLE001 - the answer is what is reported
        return str(err).split("]")[0].lstrip("[")
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    from export.repository import REPOSITORY

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--direct", action="store_true",
                        help="Triton's own loopback gRPC instead of the public front")
    args = parser.parse_args(argv)
    texts = [f"a text that cannot be embedded in a millisecond {i}" for i in range(32)]
    with started_server(REPOSITORY, RUN / "cancellation" / "triton.log") as server:
        url = server.triton_grpc_url if args.direct else server.grpc_url
        infer(url, ["warm-up"], 60)
        for r in range(args.rounds):
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                seen = set(pool.map(lambda d: infer(url, texts, d), DEADLINES_S))
            after = infer(url, ["is the server still answering?"], 60)
            print(f"round {r}: cancelled calls got {sorted(seen)}; then a plain request: "
                  f"{after}", flush=True)
            if after != "answered":
                print(f"the server stopped answering after round {r} (log: {RUN}/cancellation)")
                return 1
    print(f"the server answered after {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""FuseMoE speed: the grouped forward against a naive per-item loop, side by side.

    python -m perf.fusion_speed [--repeats 30]

Both run the served FuseMoE weights (version 1 of the built repository) on the same inputs
in one process, alternating, at batch 1 and batch 32. The grouped forward runs each selected
expert once over every row that chose it; the naive loop runs the gate and each item's top-k
experts one item at a time (the textbook definition). Writes perf/reports/fusion-speed.md
and .json; on a machine with CUDA the GPU is measured too.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ensemble import fusemoe
from export.registry import EMBEDDERS, FUSEMOE, FUSEMOE_MODEL
from perf import provenance

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "perf" / "reports"


def inputs(batch: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    """Unit-norm blocks, as the embedders send them."""
    g = torch.Generator().manual_seed(seed)
    blocks = [torch.nn.functional.normalize(torch.randn(batch, e.dim, generator=g), dim=-1)
              for e in EMBEDDERS]
    return torch.cat(blocks, dim=-1).to(device)


def naive(model: fusemoe.FuseMoE, x: torch.Tensor, k: int = FUSEMOE.top_k) -> torch.Tensor:
    """One item at a time: gate, top-k, each chosen expert on that item alone."""
    rows = []
    for row in x:
        probs = model.gate(row[None])[0]
        kept, top = torch.topk(probs, k)
        kept = kept / kept.sum()
        mixed = sum(kept[j] * model.experts[int(e)](row[None])[0] for j, e in enumerate(top))
        rows.append(torch.nn.functional.normalize(mixed, dim=-1))
    return torch.stack(rows)


def timed(fn, x: torch.Tensor, sync) -> float:
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        fn(x)
    sync()
    return time.perf_counter() - start


def measure(model: fusemoe.FuseMoE, device: str, batches: list[int], repeats: int,
            ) -> list[dict]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    paths = {"grouped": model, "naive loop": lambda x: naive(model, x)}
    rows = []
    for batch in batches:
        x = inputs(batch, device=device)
        with torch.inference_mode():
            same = torch.nn.functional.cosine_similarity(model(x).fused, naive(model, x))
        assert float(same.min()) > 0.9999, "the two paths disagree"
        for fn in paths.values():  # warm-up
            timed(fn, x, sync)
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(repeats):  # alternate so both see the same machine state
            for name, fn in paths.items():
                times[name].append(timed(fn, x, sync))
        for name, t in times.items():
            ms = np.array(t) * 1000
            rows.append({"device": device, "batch": batch, "path": name,
                         "median_ms": float(np.median(ms)),
                         "p95_ms": float(np.percentile(ms, 95)),
                         "items_per_s": batch / float(np.median(ms)) * 1000})
    return rows


def write_report(rows: list[dict], version: str, repeats: int, threads: int) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    lines = ["# FuseMoE speed: grouped experts vs a naive per-item loop", "",
             (f"Command: `python -m perf.fusion_speed --repeats {repeats}`. Weights: "
              f"{version}. Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
              f"torch {torch.__version__}, {threads} CPU threads. {repeats} timed runs per "
              "cell after one warm-up, the two paths alternating in one process; inputs are "
              "random unit-norm blocks (8320-D), top-k 2."), "",
             "| device | batch | path | median ms | p95 ms | items/s | grouped speed-up |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        peer = next(p for p in rows if p["device"] == r["device"] and p["batch"] == r["batch"]
                    and p["path"] == "naive loop")
        speed = peer["median_ms"] / r["median_ms"]
        lines.append(f"| {r['device']} | {r['batch']} | {r['path']} | {r['median_ms']:.2f} | "
                     f"{r['p95_ms']:.2f} | {r['items_per_s']:.1f} | "
                     f"{'' if r['path'] == 'naive loop' else f'{speed:.2f}x'} |")
    if not any(r["device"] == "cuda" for r in rows):
        lines += ["", "No CUDA device on this machine: GPU figures not measured."]
    path = REPORTS / "fusion-speed.md"
    provenance.write(path, "\n".join(lines) + "\n")
    (REPORTS / "fusion-speed.json").write_text(json.dumps(
        {"weights": version, "repeats": repeats, "threads": threads, "rows": rows},
        indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    from export.repository import REPOSITORY

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    args = parser.parse_args(argv)
    model, manifest = fusemoe.load(args.repository / FUSEMOE_MODEL / "1")
    rows = measure(model, "cpu", [1, 32], args.repeats)
    if torch.cuda.is_available():
        rows += measure(model.to("cuda"), "cuda", [1, 32], args.repeats)
    path = write_report(rows, manifest.version, args.repeats, torch.get_num_threads())
    for r in rows:
        print(f"{r['device']:>4} batch {r['batch']:>2} {r['path']:<10} median "
              f"{r['median_ms']:8.2f} ms  p95 {r['p95_ms']:8.2f} ms  {r['items_per_s']:8.1f} "
              "items/s")
    print(f"report: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

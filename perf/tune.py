"""``make tune``: each serving knob measured against the committed defaults, one at a time.

    python -m perf.tune [--profile pretrained|full] [--only threads batching ...] [--rounds 8]

For every variant the built repository is linked into .run/tune/repo with the models'
``configs/built.pbtxt`` changed by that one knob, a server is started on it, and two points
are measured on the same STS-B dev sentences as ``make bench``:

- batch 32: Race B's workload (the same batches of 32, sent by 2 gRPC clients), texts/s;
- batch 1: perf_analyzer at concurrency 8, texts/s and p95, and at concurrency 1, p50 (the
  latency of a lone user, which queue delays add to).

The baseline (the defaults in export/registry.py) runs first and again last, so drift of this
noisy machine shows in the table. Writes perf/reports/tuning.md and perf/results/tuning.json;
``make bench`` copies the tables into its report.

``--profile full`` (``make tune PROFILE=full``) sweeps the full profile's INT8 build (the one
``make bench PROFILE=full`` serves, built when missing) with the knobs that matter at that
size, e5-large's (E1: the critical path of one text, perf/reports/single-text-full.md) on its
own among them: perf/reports/tuning-full.md, perf/results/tuning-full.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from ensemble.stages import GRAPH_OPTIMIZATION
from export import registry as r
from export.build import linked_repository
from export.repository import REPOSITORY
from perf import provenance, workload
from perf.workload import REPORTS, RESULTS, ROOT

RUN = ROOT / ".run" / "tune"
NEURAL = [e.triton_model for e in r.EMBEDDERS if e.input is r.Input.TOKENS]


@dataclass(frozen=True)
class Variant:
    group: str
    name: str
    params: dict[str, str] = field(default_factory=dict)  # on the neural embedders
    models: tuple[str, ...] = ()  # the neural embedders ``params`` go to (empty: every one)
    fusemoe_threads: str | None = None
    instances: dict[str, int] = field(default_factory=dict)
    delay_us: int | None = None  # every dynamically batched model
    preferred: tuple[int, ...] | None = None

    def apply(self, cfg: mc.ModelConfig) -> None:
        if cfg.name in NEURAL and (not self.models or cfg.name in self.models):
            for key, value in self.params.items():
                cfg.parameters[key].string_value = value
        if cfg.name == r.FUSEMOE_MODEL and self.fusemoe_threads is not None:
            cfg.parameters["threads"].string_value = self.fusemoe_threads
        if cfg.name in self.instances:
            cfg.instance_group[0].count = self.instances[cfg.name]
        if cfg.HasField("dynamic_batching"):
            if self.delay_us is not None:
                cfg.dynamic_batching.max_queue_delay_microseconds = self.delay_us
            if self.preferred is not None:
                del cfg.dynamic_batching.preferred_batch_size[:]
                cfg.dynamic_batching.preferred_batch_size.extend(self.preferred)


BASELINE = Variant("baseline", "defaults")
DEFAULT = r.RUNTIME
VARIANTS = [
    Variant("threads", "threads 0 (ONNX Runtime / torch default: every core)",
            {"threads": "0"}, fusemoe_threads="0"),
    Variant("threads", "threads 2", {"threads": "2"}, fusemoe_threads="2"),
    Variant("instances", "1 instance of every token embedder (the default is 2)",
            instances=dict.fromkeys(NEURAL, 1)),
    *[Variant("graph", f"graph optimisation {level}", {"graph_optimization": level})
      for level in GRAPH_OPTIMIZATION if level != DEFAULT.graph_optimization],
    Variant("batching", "queue delay 0 µs", delay_us=0),
    Variant("batching", "queue delay 5 ms", delay_us=5_000),
    Variant("batching", "queue delay 10 ms", delay_us=10_000),
    Variant("batching", "no preferred sizes (largest batch available)", preferred=()),
    Variant("padding", "ragged only: one batch padded to its longest row",
            {"length_buckets": ""}),
    Variant("padding", "coarser buckets 16,32,64,128,256,512",
            {"length_buckets": "16,32,64,128,256,512"}),
]


E1 = r.embedder("E1").triton_model
# At full size (each variant takes minutes there): threads, instances, the queue delay's two
# ends and padding, but not the graph levels (perf/reports/kernels-full.md measured ONNX
# Runtime's levels and fusions per model) nor the finer batching steps; and e5-large's own
# threads and instances.
FULL_VARIANTS = [
    *[v for v in VARIANTS if v.group in ("threads", "instances")
      or v.name in ("queue delay 0 µs", "queue delay 10 ms",
                    "ragged only: one batch padded to its longest row")],
    Variant("e5-large", "E1 2 threads (the others 1)", {"threads": "2"}, models=(E1,)),
    Variant("e5-large", "E1 3 instances (the others 2)", instances={E1: 3}),
]
PROFILES = {"pretrained": ("tuning", VARIANTS), "full": ("tuning-full", FULL_VARIANTS)}


def variant_repository(variant: Variant, target: Path, source: Path = REPOSITORY,
                       models: set[str] | None = None) -> Path:
    """``source`` (or only ``models`` of it) linked into ``target`` with each model's built
    config changed by ``variant``."""
    if target.exists():
        shutil.rmtree(target)
    return linked_repository(source, target, variant.apply,
                             f"perf/tune.py variant: {variant.name}", models)


def measure(variant: Variant, texts: list[str], data: Path, rounds: int,
            interval_ms: int, source: Path = REPOSITORY) -> dict:
    from ensemble.server import Ports, TritonServer, free_ports

    repo = variant_repository(variant, RUN / "repo", source)
    server = TritonServer(repo, Ports(*free_ports(3)),
                          RUN / "triton.log")
    print(f"[{variant.group}] {variant.name}: starting the server ...", flush=True)
    start = time.perf_counter()
    server.start(timeout=600)
    load_s = time.perf_counter() - start
    try:
        race = workload.served_pipeline(server.grpc_url, workload.batches(texts, 32, rounds), 2)
        single, lone = (point(server, data, c, interval_ms) for c in (8, 1))
    finally:
        server.stop()
    return {"group": variant.group, "variant": variant.name, "load_s": load_s,
            "batch32_items_per_s": race["items_per_s"], "batch32_p95_ms": race["p95_ms"],
            "batch1_items_per_s": single["items_per_s"], "batch1_p95_ms": single["p95_ms"],
            "batch1_c1_p50_ms": lone["p50_ms"], "models": single["models"]}


def point(server, data: Path, concurrency: int, interval_ms: int) -> dict:
    """perf_analyzer at batch 1; a point that does not stabilise is NaN, the sweep goes on."""
    try:
        return workload.perf_analyzer(server.grpc_url, server.http_url, data, 1, concurrency,
                                   interval_ms)
    except SystemExit as err:
        print(err, flush=True)
        nan = float("nan")
        return {"items_per_s": nan, "p50_ms": nan, "p95_ms": nan, "models": {}}


def defaults_text() -> str:
    d, b = DEFAULT, r.Batching()
    return (f"threads {d.threads}, {d.instances} instances of each token embedder, graph "
            f"optimisation "
            f"{d.graph_optimization}, length buckets {','.join(map(str, d.length_buckets))}, "
            f"queue delay {b.max_queue_delay_us} µs, preferred sizes "
            f"{'/'.join(map(str, b.preferred_batch_sizes))}")


def tables(rows: list[dict]) -> list[str]:
    lines = [("| knob | variant | batch 32 texts/s (2 clients) | batch 32 p95 ms | "
              "batch 1 texts/s (concurrency 8) | batch 1 p95 ms (c 8) | batch 1 p50 ms (c 1) "
              "| load s |"),
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lone = row.get("batch1_c1_p50_ms")
        lines.append(f"| {row['group']} | {row['variant']} | {row['batch32_items_per_s']:.1f} | "
                     f"{row['batch32_p95_ms']:.0f} | {row['batch1_items_per_s']:.1f} | "
                     f"{row['batch1_p95_ms']:.0f} | "
                     f"{'-' if lone is None else f'{lone:.0f}'} | {row['load_s']:.0f} |")
    return lines


def winners(rows: list[dict]) -> list[str]:
    """Variants that beat both baseline rows on batch 32 throughput without losing batch 1:
    concurrency-8 throughput at least the lower baseline's, concurrency-1 p50 at most the
    higher baseline's."""
    base = [x for x in rows if x["group"] == "baseline"]
    floor_b32 = max(x["batch32_items_per_s"] for x in base)
    floor_b1 = min(x["batch1_items_per_s"] for x in base)
    ceiling_c1 = max(x.get("batch1_c1_p50_ms", float("inf")) for x in base)
    return [x["variant"] for x in rows if x["group"] != "baseline"
            and x["batch32_items_per_s"] > floor_b32 and x["batch1_items_per_s"] >= floor_b1
            and x.get("batch1_c1_p50_ms", float("inf")) <= ceiling_c1]


def write(rows: list[dict], seconds: float, defaults: str | None = None,
          profile: str = "pretrained") -> Path:
    name = PROFILES[profile][0]
    report = REPORTS / f"{name}.md"
    defaults = defaults or defaults_text()
    won = winners(rows)
    command = ("`make tune` (`python -m perf.tune`)" if profile == "pretrained" else
               f"`make tune PROFILE={profile}` (`python -m perf.tune --profile {profile}`)")
    title = "" if profile == "pretrained" else f" ({profile} profile, INT8)"
    lines = [f"# Tuning{title}: one knob at a time against the defaults", "",
             (f"Command: {command}, {seconds / 60:.0f} min on this "
              "2-core machine; every variant on a fresh server over the same built repository. "
              f"Defaults (export/registry.py `Runtime`, `Batching`): {defaults}. "
              "Batch 32: the Race B batches (8 × 32 STS-B dev sentences) from 2 gRPC clients; "
              "batch 1: perf_analyzer, gRPC, concurrency 8. The baseline runs first and last: "
              "the spread between those two rows is this machine's noise."), "",
             *tables(rows), "",
             ("A default changes only when a variant beats both baseline rows on batch 32 "
              "throughput (Race B's figure of merit) without losing batch 1 (concurrency-8 "
              "texts/s at least the lower baseline's, concurrency-1 p50 at most the higher "
              "baseline's). Winners of this run: "
              + ("; ".join(won) if won else "none: the defaults stay") + ". "
              "On a bigger machine "
              "change the knobs in `model_repository/<model>/configs/built.pbtxt` "
              "(`instance_group.count`, parameters `threads`, `graph_optimization`, "
              "`length_buckets`; `dynamic_batching`) or in export/registry.py and rebuild.")]
    provenance.write(report, "\n".join(lines) + "\n",
                     workload.FULL_RUN / "int8" if profile == "full" else None)
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"defaults": defaults, "rows": rows, "winners": won, "minutes": seconds / 60},
        indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="pretrained")
    parser.add_argument("--only", nargs="+", help="knob groups to run (default: all)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--interval-ms", type=int, default=5000)
    parser.add_argument("--report-only", action="store_true",
                        help="write the report again from perf/results/tuning.json")
    args = parser.parse_args(argv)
    if args.report_only:
        saved = json.loads((RESULTS / f"{PROFILES[args.profile][0]}.json").read_text())
        print(write(saved["rows"], saved["minutes"] * 60, saved["defaults"], args.profile))
        return 0
    start = time.perf_counter()
    source = workload.full_build("int8") if args.profile == "full" else REPOSITORY
    texts = workload.sentences(512)
    data = workload.input_data(texts, RUN / "fused_text-input.json")
    variants = [v for v in PROFILES[args.profile][1] if not args.only or v.group in args.only]
    rows = []
    for i, variant in enumerate([BASELINE, *variants, BASELINE]):
        print(f"variant {i + 1}/{len(variants) + 2}", flush=True)
        rows.append(measure(variant, texts, data, args.rounds, args.interval_ms, source))
        print(f"  -> batch 32 {rows[-1]['batch32_items_per_s']:.1f} texts/s, batch 1 "
              f"{rows[-1]['batch1_items_per_s']:.1f} texts/s", flush=True)
    report = write(rows, time.perf_counter() - start, profile=args.profile)
    print(f"report: {report.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

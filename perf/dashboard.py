"""The Grafana dashboard (docker/grafana/fusedembed.json), generated from the panels below, and
its rendering against a real Prometheus.

    python -m perf.dashboard --write                 # regenerate the JSON (a test checks it)
    python -m perf.dashboard --render http://127.0.0.1:9090 [--minutes 10]
    python -m perf.dashboard --live --minutes 5      # make dashboard
    python -m perf.dashboard --render http://127.0.0.1:9090 --load 127.0.0.1:8001 --minutes 5

``--render`` runs every panel's PromQL through Prometheus' HTTP API over the last minutes and
draws the answers as the dashboard lays them out (perf/reports/dashboard.png, with a table
of what each query returned in perf/reports/dashboard.md): a query that Prometheus refuses
fails the render. ``--live`` (``make dashboard``) does it end to end: a server under mixed
load on every entry point, Debian's Prometheus scraping it, then the render.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from export.registry import (
    CACHED_MODEL,
    EMBEDDERS,
    ENSEMBLE_MODEL,
    FAILSAFE_MODEL,
    FUSEMOE_MODEL,
    PREPROCESS_MODEL,
    TOKENIZER_FAMILIES,
)
from perf import provenance

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docker" / "grafana" / "fusedembed.json"
REPORTS = ROOT / "perf" / "reports"
ENTRY_MODELS = (ENSEMBLE_MODEL, CACHED_MODEL, FAILSAFE_MODEL)
STEP_MODELS = (PREPROCESS_MODEL, *(f.triton_model for f in TOKENIZER_FAMILIES),
               *(e.triton_model for e in EMBEDDERS), FUSEMOE_MODEL)
ENTRY = f'model=~"{"|".join(ENTRY_MODELS)}"'
STEPS = f'model=~"{"|".join(STEP_MODELS)}"'
# The Pods metric of the HPA (docker/k8s/prometheus-adapter/values.yaml), per pod.
QUEUE_PER_REQUEST = (
    "sum by (pod) (delta(nv_inference_queue_duration_us[30s])) / (1 + sum by (pod) "
    f"(delta(nv_inference_request_success{{{ENTRY}}}[30s])))")


def rate_by(counter: str, label: str) -> str:
    """Per second over 5 minutes, by ``label``."""
    return f"sum by ({label}) (rate({counter}[5m]))"


def per_request(counter: str, selector: str, scale: float = 1000.0) -> str:
    """Microseconds of ``counter`` per successful request, by model, in ms."""
    return (f"sum by (model) (rate({counter}{{{selector}}}[1m])) / sum by (model) "
            f"(rate(nv_inference_request_success{{{selector}}}[1m])) / {scale:g}")


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # Grafana unit id
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    description: str = ""
    gpu_only: bool = False


PANELS = (
    Panel("Requests per second by entry point", "reqps",
          ((f"sum by (model) (rate(nv_inference_request_success{{{ENTRY}}}[1m]))",
            "{{model}}"),)),
    Panel("Failed requests per second", "reqps",
          (("sum by (model) (rate(nv_inference_request_failure[1m]))", "{{model}}"),),
          "Every failure, the caller's (HTTP 400) and ours (5xx), by model"),
    Panel("Latency p50 and p95 by entry point", "ms",
          ((f'max by (model) (nv_inference_request_summary_us{{{ENTRY},quantile="0.5"}}) / 1000',
            "p50 {{model}}"),
           ((f'max by (model) (nv_inference_request_summary_us{{{ENTRY},quantile="0.95"}}) '
            "/ 1000"), "p95 {{model}}")),
          "Triton's latency summaries (--metrics-config summary_latencies=true)"),
    Panel("Latency p95 by step", "ms",
          (((f'max by (model) (nv_inference_request_summary_us{{{STEPS},quantile="0.95"}}) '
            "/ 1000"), "{{model}}"),),
          "Each model's own p95 (queue and compute), from Triton's latency summaries"),
    Panel("Average latency per request by model", "ms",
          ((per_request("nv_inference_request_duration_us", 'model=~".+"'), "{{model}}"),),
          "From Triton's duration counters"),
    Panel("Queue time per request by step", "ms",
          ((per_request("nv_inference_queue_duration_us", STEPS), "{{model}}"),)),
    Panel("Compute time per request by step", "ms",
          ((per_request("nv_inference_compute_infer_duration_us", STEPS), "{{model}}"),)),
    Panel("Queue time per entry request (the autoscaler's metric)", "µs",
          ((QUEUE_PER_REQUEST, "{{pod}}"),),
          "avg_time_queue_us of the HPA: every step's queue time over the entry points' "
          "requests, 30 s windows"),
    Panel("Response cache hit ratio", "percentunit",
          ((("sum(rate(nv_cache_num_hits_per_model[5m])) / (sum(rate(nv_cache_num_hits_per_model"
            "[5m])) + sum(rate(nv_cache_num_misses_per_model[5m])))"), "fused_text_cached"),)),
    Panel("PII redactions per second by type", "ops",
          ((rate_by("fusedembed_pii_redactions_total", "type"), "{{type}}"),)),
    Panel("Truncated texts per second by block", "ops",
          ((rate_by("fusedembed_truncations_total", "block"), "{{block}}"),)),
    Panel("Fail-safe: blocks left out per second", "ops",
          ((rate_by("fusedembed_failsafe_missing_blocks_total", "block"), "{{block}}"),)),
    Panel("Fail-safe: circuit breaker state by block", "none",
          (("max by (block) (fusedembed_breaker_state)", "{{block}}"),),
          "0 closed, 1 open (the block is skipped), 2 half-open (probing)"),
    Panel("Fail-safe: circuit breaker transitions per second", "ops",
          ((("sum by (block, to) (rate(fusedembed_breaker_transitions_total[5m]))"),
            "{{block}} to {{to}}"),)),
    Panel("FuseMoE expert share", "percentunit",
          (((f"{rate_by('fusedembed_expert_selections_total', 'expert')} / ignoring (expert) "
            "group_left sum(rate(fusedembed_expert_selections_total[5m]))"), "expert {{expert}}"),)),
    Panel("Fusion version served", "none",
          (("max by (version) (fusedembed_fusion_version_info)", "{{version}}"),)),
    Panel("Server CPU and memory", "percentunit",
          (("max(nv_cpu_utilization)", "CPU utilisation"),
           ("max(nv_cpu_memory_used_bytes) / max(nv_cpu_memory_total_bytes)", "memory used"))),
    Panel("GPU utilisation and memory", "percentunit",
          (("max by (gpu_uuid) (nv_gpu_utilization)", "utilisation {{gpu_uuid}}"),
           ("max by (gpu_uuid) (nv_gpu_memory_used_bytes / nv_gpu_memory_total_bytes)",
            "memory {{gpu_uuid}}")),
          "GPU images only", gpu_only=True),
)
WIDTH, HEIGHT = 8, 8  # grid units of one panel: three per row


def dashboard() -> dict:
    panels = []
    for i, p in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": p.title, "description": p.description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": HEIGHT, "w": WIDTH, "x": (i % 3) * WIDTH, "y": (i // 3) * HEIGHT},
            "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for j, (expr, legend) in enumerate(p.targets)]})
    return {
        "uid": "fusedembed", "title": "fusedembed", "tags": ["fusedembed", "triton"],
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [{"name": "datasource", "label": "Prometheus",
                                 "type": "datasource", "query": "prometheus"}]},
        "panels": panels}


def rendered_json() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list:
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{query}", timeout=30) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error')}")
    return body["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legend format: ``{{label}}`` replaced by the series' value ("" if absent)."""
    import re

    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return text.strip() or "all"


def render(prometheus: str, minutes: float, out_dir: Path = REPORTS,
           command: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = time.time()
    start, step = end - minutes * 60, max(5.0, minutes * 60 / 240)
    rows = math.ceil(len(PANELS) / 3)
    fig, axes = plt.subplots(rows, 3, figsize=(18, 3.6 * rows), squeeze=False)
    table = ["| panel | query | series | last value |", "|---|---|---:|---|"]
    for ax, panel in zip(axes.flat, PANELS):
        ax.set_title(panel.title, fontsize=9)
        drawn = 0
        for expr, template in panel.targets:
            result = query_range(prometheus, expr, start, end, step)
            last = []
            for series in result:
                points = [(float(t), float(v)) for t, v in series["values"]
                          if math.isfinite(float(v))]
                if not points:
                    continue
                xs = [(t - end) / 60 for t, _ in points]
                ax.plot(xs, [v for _, v in points], label=legend(template, series["metric"]),
                        linewidth=1)
                last.append(f"{points[-1][1]:.4g}")
                drawn += 1
            table.append(f"| {panel.title} | `{expr}` | {len(result)} | "
                         f"{', '.join(last[:4]) + (' …' if len(last) > 4 else '')} |")
        if drawn:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        else:
            ax.text(0.5, 0.5, "no data" + (" (GPU only)" if panel.gpu_only else ""),
                    ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xlabel("minutes", fontsize=7)
        ax.set_ylabel(panel.unit, fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(PANELS):]:
        ax.axis("off")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "dashboard.png"
    fig.savefig(png, dpi=80)
    provenance.write(out_dir / "dashboard.md", 
        "# The Grafana dashboard's queries against a real Prometheus\n\n"
        f"Generated by `{command or f'python -m perf.dashboard --render {prometheus}`'} "
        f"({minutes:g} minutes ending {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(end))})."
        " Each panel of docker/grafana/fusedembed.json, its queries run through Prometheus' "
        "HTTP API and drawn as the dashboard lays them out:\n\n![dashboard](dashboard.png)\n\n"
        + "\n".join(table) + "\n")
    return png


def prometheus_binary() -> str:
    """Debian's Prometheus, installed when missing (root on Debian/Ubuntu)."""
    import os
    import shutil
    import subprocess

    found = shutil.which("prometheus")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        "prometheus"], check=True, env=dict(os.environ,
                                                             DEBIAN_FRONTEND="noninteractive"))
        return shutil.which("prometheus") or "/usr/bin/prometheus"
    raise SystemExit("Prometheus is needed: apt-get install prometheus")


def load(grpc_url: str, seconds: float) -> dict[str, int]:
    """Mixed traffic on every entry point for ``seconds``: STS-B dev sentences, texts with
    PII, texts past the token limits, repeats for the response cache. Requests answered,
    by entry point."""
    import threading

    from fusedembed_client import FusedEmbedClient
    from perf.workload import T0, sentences

    texts = sentences(400)
    pii = [f"write to user{i}@example.com or call +1 415 555 {1000 + i:04d}" for i in range(50)]
    long = [" ".join(texts[i:i + 40]) for i in range(0, 200, 40)]
    answered: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def client(model: str, pool: list[str], batch: int, pause: float) -> None:
        with FusedEmbedClient(grpc_url, "grpc", model=model) as c:
            n = 0
            while time.monotonic() < deadline:
                chunk = [pool[(n + j) % len(pool)] for j in range(batch)]
                n += batch
                c.embed_batch(chunk, [T0] * batch)
                with lock:
                    answered[model] = answered.get(model, 0) + 1
                time.sleep(pause)

    plan = [("fused_text", texts + pii + long, 8, 0.2), ("fused_text", texts, 1, 0.05),
            ("fused_text_cached", texts[:20], 1, 0.05),
            ("fused_text_failsafe", texts + pii, 4, 0.5)]
    threads = [threading.Thread(target=client, args=a, daemon=True) for a in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answered


def live(minutes: float) -> Path:
    """A server under mixed load for ``minutes``, scraped by a Prometheus of its own; then
    every panel rendered against that Prometheus."""
    import subprocess

    from ensemble.server import free_port
    from perf.workload import RUN, started_server

    work = RUN / "dashboard"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    with started_server(ROOT / "model_repository", work / "triton.log") as server:
        port = free_port()
        config = work / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 5s, evaluation_interval: 5s}\n"
            "scrape_configs:\n  - job_name: fusedembed\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{server.ports.metrics}']\n"
            "        labels: {pod: fusedembed-0}\n")
        prometheus = subprocess.Popen(
            [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "wb"))  # noqa: SIM115
        try:
            time.sleep(10)
            print(f"load for {minutes:g} min on every entry point ...", flush=True)
            answered = load(server.grpc_url, minutes * 60)
            print(f"answered: {answered}", flush=True)
            time.sleep(15)  # the last scrapes
            return render(f"http://127.0.0.1:{port}", minutes + 0.5, command=(
                f"python -m perf.dashboard --live --minutes {minutes:g}` (`make dashboard`): "
                f"a server under mixed load on every entry point ({answered}), Debian's "
                "Prometheus scraping it every 5 s; the render covers"))
        finally:
            prometheus.terminate()
            prometheus.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {DASHBOARD}")
    parser.add_argument("--render", metavar="PROMETHEUS_URL")
    parser.add_argument("--live", action="store_true",
                        help="start a server and a Prometheus, load it for --minutes, render")
    parser.add_argument("--load", metavar="GRPC_URL",
                        help="with --render: first load this server for --minutes (e.g. the "
                             "compose service, 127.0.0.1:8001)")
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.live:
        print(f"wrote {live(args.minutes)}")
    command = ""
    if args.render and args.load:
        answered = load(args.load, args.minutes * 60)
        time.sleep(15)  # the last scrapes
        command = (f"python -m perf.dashboard --render {args.render} --load {args.load} "
                   f"--minutes {args.minutes:g}`: the server at {args.load} under mixed load on "
                   f"every entry point ({answered}); the render covers")
    if args.write:
        DASHBOARD.write_text(rendered_json())
        print(f"wrote {DASHBOARD}")
    if args.render:
        minutes = args.minutes + (0.5 if args.load else 0)
        print(f"wrote {render(args.render.rstrip('/'), minutes, command=command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

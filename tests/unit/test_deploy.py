"""Deployment files checked offline: the Kustomize overlays render and pass Kubernetes' own
schemas (strict), the custom resources agree with each other and with the server, compose
and the dashboard are what the project generates and serves, and the server's container
settings (admin key file, an installed Triton) behave."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ensemble import server
from export.registry import GPU, MEMORY_BUDGET
from perf.dashboard import DASHBOARD, ENTRY_MODELS, rendered_json

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
OVERLAYS = ("cpu", "gpu")
KUBERNETES = ("1.31.0", "1.37.0")  # the releases the manifests are checked against


def tool(name: str) -> str:
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"{name} is missing from the venv (requirements.txt installs it)")
    return str(path)


def render(overlay: str) -> str:
    return subprocess.run([tool("kubectl"), "kustomize", str(DOCKER / "k8s" / "overlays" / overlay)],
                          check=True, capture_output=True, text=True).stdout


def documents(text: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, str]:
    return request.param, render(request.param)


def validate(text: str, tmp_path: Path, version: str) -> subprocess.CompletedProcess:
    path = tmp_path / "rendered.yaml"
    path.write_text(text)
    return subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, str(path)],
                          check=False, capture_output=True, text=True)


@pytest.mark.parametrize("version", KUBERNETES)
def test_overlays_pass_strict_schema_validation(rendered, tmp_path, version):
    _, text = rendered
    result = validate(text, tmp_path, version)
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in ("deployment", "service", "poddisruptionbudget", "horizontalpodautoscaler",
                 "configmap"):
        assert f"passed for resource {kind}/" in result.stdout, kind
    # Positive control: an unknown field in the Deployment fails strict validation.
    broken = text.replace("terminationGracePeriodSeconds:", "terminationGracePeriod:")
    assert broken != text
    assert validate(broken, tmp_path, version).returncode != 0


def test_deployment_serves_as_the_server_expects(rendered):
    overlay, text = rendered
    docs = documents(text)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    ports = server.Ports()  # the server's defaults, which the image keeps
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
        "http": ports.http, "grpc": ports.grpc, "metrics": ports.metrics,
        "openai": server.GATEWAY_PORT}
    assert main["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert main["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert main["image"] == f"localhost/fusedembed:{overlay}"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
    for container in pod["containers"] + pod["initContainers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "/tmp" in mounts  # FUSEDEMBED_RUN_DIR of the image
    # The admin key: a file from a Secret, named by the variable the server reads.
    env = {e["name"]: e.get("value") for e in main["env"]}
    key_file = Path(env["FUSEDEMBED_ADMIN_KEY_FILE"])
    assert volumes[mounts[str(key_file.parent)]]["secret"]["secretName"] == "fusedembed-admin"
    # The repository: the init container fills the volume the server is told to serve.
    repository = main["args"][main["args"].index("--repository") + 1]
    (init,) = pod["initContainers"]
    assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]}[repository] == \
        mounts[repository]
    assert repository in init["command"][-1]
    memory = main["resources"]["limits"]["memory"]
    assert memory.endswith("Gi") and int(memory[:-2]) * 1024 >= MEMORY_BUDGET.server_mib
    if overlay == "gpu":
        assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert mounts[GPU.engine_cache] in volumes
    else:
        assert "nvidia.com/gpu" not in main["resources"]["limits"]


def test_service_monitor_and_autoscaler_agree_with_the_service(rendered):
    _, text = rendered
    docs = documents(text)
    service, monitor, hpa = docs["Service"], docs["ServiceMonitor"], docs["HorizontalPodAutoscaler"]
    labels = service["metadata"]["labels"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Triton's metrics port and the gateway's /metrics, both ports of the Service.
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics", "openai"]
    assert {"metrics", "openai"} <= {p["name"] for p in service["spec"]["ports"]}
    pods = service["spec"]["selector"]
    template = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pods.items() <= template.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= \
        template.items()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", docs["Deployment"]["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    rules = yaml.safe_load((DOCKER / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = rules["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    query = rule["metricsQuery"]
    assert "nv_inference_queue_duration_us" in query and "nv_inference_request_success" in query
    assert all(m in query for m in ENTRY_MODELS)
    dashboard = docs["ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["fusedembed.json"]) == json.loads(DASHBOARD.read_text())


def test_kserve_runtime_and_inference_service_agree():
    runtime = yaml.safe_load((DOCKER / "kserve" / "servingruntime.yaml").read_text())
    service = yaml.safe_load((DOCKER / "kserve" / "inferenceservice.yaml").read_text())
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1",
                                                        "ServingRuntime")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1",
                                                        "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [{"name": f["name"], "version": f["version"]}
                                    for f in runtime["spec"]["supportedModelFormats"]]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    # The server listens where KServe routes, and serves the store KServe mounts.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert [p["containerPort"] for p in container["ports"]] == [int(env["HTTP_PORT"])]
    ports = [env[k] for k in ("HTTP_PORT", "GRPC_PORT", "METRICS_PORT", "GATEWAY_PORT")
             if env.get(k, "8080") != "off"]
    assert len(set(ports)) == len(ports), ports  # the gateway's default is KServe's HTTP port
    assert container["args"][container["args"].index("--repository") + 1] == "/mnt/models"
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == env["METRICS_PORT"]


def test_compose_wires_the_service_prometheus_and_grafana():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert services["fusedembed"]["profiles"] == ["cpu"]
    assert services["fusedembed-gpu"]["profiles"] == ["gpu"]
    (device,) = services["fusedembed-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    for name in ("fusedembed", "fusedembed-gpu"):
        service = services[name]
        assert service["shm_size"] == "1g"
        assert "fusedembed" in service["networks"]["default"]["aliases"]
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port  # loopback unless published on purpose
    scrape = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]]
    assert targets == [f"fusedembed:{server.Ports().metrics}", f"fusedembed:{server.GATEWAY_PORT}"]
    mounts = services["grafana"]["volumes"]
    assert any(m.startswith("./grafana/fusedembed.json:") for m in mounts)
    provider = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "dashboards" / "fusedembed.yaml").read_text())
    dashboards = provider["providers"][0]["options"]["path"]
    assert any(m.split(":")[1].startswith(dashboards) for m in mounts if "fusedembed.json" in m)


def test_compose_s_tracing_profile_wires_a_collector_to_jaeger_and_is_off_by_default():
    from urllib.parse import urlsplit

    from fusedembed_client.gateway.tracing import TraceSettings

    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert services["otel-collector"]["profiles"] == services["jaeger"]["profiles"] == ["tracing"]
    env = services["fusedembed"]["environment"]
    defaults = {k: re.fullmatch(r"\$\{\w+:-(.*)\}", v).group(1) for k, v in env.items()
                if k.startswith("OTEL_")}
    assert defaults["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""  # off unless asked for
    assert not TraceSettings.from_env(defaults).enabled
    mount = next(m for m in services["otel-collector"]["volumes"] if "collector.yaml" in m)
    source, target = mount.split(":")[:2]
    assert f"--config={target}" in services["otel-collector"]["command"]
    config = yaml.safe_load((DOCKER / source).read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert pipeline[kind] and set(pipeline[kind]) <= set(config[kind]), kind
    # fusedembed's exporters speak OTLP over HTTP to the collector's documented port.
    http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    documented = "http://otel-collector:4318"
    assert documented in (DOCKER / "compose.yaml").read_text()
    assert urlsplit(documented).port == int(http.rsplit(":", 1)[1])
    assert urlsplit(documented).hostname == "otel-collector"
    (exporter,) = pipeline["exporters"]
    assert config["exporters"][exporter]["endpoint"].split(":")[0] == "jaeger"


def test_dashboard_is_generated():
    assert DASHBOARD.read_text() == rendered_json(), "run python -m perf.dashboard --write"


def test_admin_key_from_a_mounted_secret_file(tmp_path, monkeypatch):
    monkeypatch.delenv("FUSEDEMBED_OPEN_ADMIN", raising=False)
    monkeypatch.delenv("FUSEDEMBED_ADMIN_KEY", raising=False)
    secret = tmp_path / "admin-key"
    secret.write_text("from-a-secret\n")
    monkeypatch.setenv("FUSEDEMBED_ADMIN_KEY_FILE", str(secret))
    assert server.admin_key(tmp_path / "run") == "from-a-secret"
    assert not (tmp_path / "run").exists()  # nothing written beside a given key
    monkeypatch.setenv("FUSEDEMBED_ADMIN_KEY", "from-the-environment")
    assert server.admin_key(tmp_path / "run") == "from-the-environment"
    monkeypatch.delenv("FUSEDEMBED_ADMIN_KEY")
    secret.write_text("")
    with pytest.raises(server.ServerError, match="empty"):
        server.admin_key(tmp_path / "run")
    monkeypatch.setenv("FUSEDEMBED_ADMIN_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(server.ServerError, match="cannot read"):
        server.admin_key(tmp_path / "run")


def test_an_installed_triton_is_linked_with_this_pythons_stub(tmp_path, monkeypatch):
    home = tmp_path / "opt" / "tritonserver"
    for path in ("bin/tritonserver", "lib/libtritonserver.so", "caches/local/libcache.so",
                 "backends/python/libtriton_python.so",
                 "backends/python/triton_python_backend_stub",
                 "backends/onnxruntime/libtriton_onnxruntime.so"):
        (home / path).parent.mkdir(parents=True, exist_ok=True)
        (home / path).write_text(path)
    monkeypatch.setenv("FUSEDEMBED_TRITON_HOME", str(home))
    assert server.triton_distribution() == (home, home / "lib")
    target = server.prepare_runtime(tmp_path / "prepared")
    for name in ("bin", "lib", "caches"):
        assert (target / name).is_symlink() and (target / name).resolve() == home / name
    assert (target / "backends" / "onnxruntime").resolve() == home / "backends" / "onnxruntime"
    python = target / "backends" / "python"
    assert not python.is_symlink()
    assert (python / "libtriton_python.so").read_text() == "backends/python/libtriton_python.so"
    stub = python / "triton_python_backend_stub"
    assert stub.read_bytes() == server.python_stub().read_bytes()  # not NGC's 3.10 stub
    assert (home / "backends/python/triton_python_backend_stub").read_text().startswith("backends")
    monkeypatch.setenv("FUSEDEMBED_TRITON_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(server.ServerError, match="FUSEDEMBED_TRITON_HOME"):
        server.triton_distribution()


def test_the_image_script_and_containerfiles_name_what_exists():
    script = (DOCKER / "image.sh").read_text()
    assert "docker/Containerfile" in script and "--isolation=chroot" in script
    for containerfile in ("Containerfile", "Containerfile.gpu"):
        text = (DOCKER / containerfile).read_text()
        for line in text.splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                source = line.split()[1]
                if source not in (".", "fusemoe/", "wheels/", "certs/"):  # staged by image.sh
                    assert (ROOT / source).exists(), (containerfile, source)
        assert "USER 1000" in text


@pytest.mark.parametrize("containerfile", ["Containerfile", "Containerfile.gpu"])
def test_the_healthcheck_fails_unless_live_and_ready(containerfile):
    """The HEALTHCHECK's own command against a server whose answers the test sets."""
    import http.server
    import threading

    text = (DOCKER / containerfile).read_text()
    command = json.loads(text.split("HEALTHCHECK", 1)[1].split("CMD", 1)[1].splitlines()[0])
    answers = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(answers.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    env = dict(os.environ, HTTP_PORT=str(httpd.server_address[1]))
    try:
        for live, ready, healthy in ((200, 200, True), (503, 200, False), (200, 503, False)):
            answers.update({"/v2/health/live": live, "/v2/health/ready": ready})
            run = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True,
                                 check=False)
            assert (run.returncode == 0) == healthy, (live, ready, run.stderr[-300:])
    finally:
        httpd.shutdown()


def test_a_process_group_counts_as_gone_once_its_members_exited():
    group = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert server.living_members(group.pid) == [group.pid]
        os.kill(group.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while server.living_members(group.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.living_members(group.pid) == []  # a zombie, not reaped yet: gone
        assert group.poll() == -signal.SIGKILL
    finally:
        if group.poll() is None:
            group.kill()
            group.wait()

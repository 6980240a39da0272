"""Run the real ``tritonserver`` binary from the ``nvidia-pytriton`` wheel on this model repository.

    python -m ensemble.server        # HTTP_PORT, GRPC_PORT, METRICS_PORT (8000/8001/8002)

Once Triton is ready it starts the OpenAI-compatible gateway beside it on GATEWAY_PORT (8080;
``fusedembed gateway``, bound like Triton; GATEWAY_PORT=off leaves it out) and stops it with
the server.

The wheel's binary needs: its bundled libraries on ``LD_LIBRARY_PATH``; the Python stub for
this interpreter's version copied into the backend folder; ``--cache-directory`` pointing at
its ``caches/``; and the venv's ``python3`` first on ``PATH`` (the stub finds its packages
there, not through ``PYTHONPATH``). The service listens on 127.0.0.1 unless FUSEDEMBED_HOST
says otherwise.

Triton's own HTTP and gRPC listen on loopback ports of their own; the public HTTP_PORT and
GRPC_PORT are the front's (``ensemble.front``: one process per protocol), which checks every
inference request before Triton sees it. The metrics port is Triton's.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ensemble.stall import (
    Sample,
    StallDetector,
    cpu_seconds,
    parse_metrics,
    write_verdict,
)
from fusedembed_client.gateway.tracing import TraceSettings

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
# Writable state (the generated admin key, the server's working folder): FUSEDEMBED_RUN_DIR,
# e.g. a tmpfs in a container whose root filesystem is read-only.
RUN_DIR = Path(os.environ.get("FUSEDEMBED_RUN_DIR", ROOT / ".run"))
# The server copied with the stub for this Python: FUSEDEMBED_TRITON_DIR, e.g. prepared once
# when a container image is built.
TRITON_DIR = Path(os.environ.get("FUSEDEMBED_TRITON_DIR", RUN_DIR / "tritonserver"))
CACHE_BYTES = 256 * 1024 * 1024  # local response cache of fused_text_cached
# glibc's malloc for tritonserver and the Python stubs (inherited), unless set already: a
# buffer of 1 MiB or more is mapped on its own and returned to the system when freed, and a
# heap gives back what it holds free past 16 MiB. By default glibc raises the mapping
# threshold as large buffers are freed, so after a burst of the largest requests the
# processes kept their peak buffers in their heaps (perf/reports/burst-default-malloc.md
# against perf/reports/burst-2inst.md).
RETURNING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20),
                    "MALLOC_TRIM_THRESHOLD_": str(16 << 20)}
# The model-repository (load/unload), shared-memory, logging and trace APIs need this header
# with the admin key, over HTTP and gRPC, unless FUSEDEMBED_OPEN_ADMIN=1 opens them.
ADMIN_HEADER = "fusedembed-admin-key"
LOOPBACK = "127.0.0.1"
FRONTS = ("http", "grpc")
# Logging and trace settings too: without the key any client could turn on verbose logging
# or trace every request, filling the disk and slowing every request.
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")


class ServerError(RuntimeError):
    pass


def admin_headers(protocol: str, key: str) -> dict[str, str]:
    """The header that unlocks the restricted APIs (Triton prefixes it over gRPC)."""
    name = ADMIN_HEADER if protocol == "http" else f"triton-grpc-protocol-{ADMIN_HEADER}"
    return {name: key}


def admin_key(run_dir: Path = RUN_DIR) -> str | None:
    """FUSEDEMBED_ADMIN_KEY, else the file FUSEDEMBED_ADMIN_KEY_FILE names (a mounted secret),
    else a random key kept in RUN_DIR/admin-key (mode 0600); None when the admin APIs are
    explicitly opened."""
    import secrets

    if os.environ.get("FUSEDEMBED_OPEN_ADMIN") == "1":
        return None
    key = os.environ.get("FUSEDEMBED_ADMIN_KEY")
    if key:
        return key
    secret = os.environ.get("FUSEDEMBED_ADMIN_KEY_FILE")
    if secret:
        try:
            key = Path(secret).read_text().strip()
        except OSError as err:
            raise ServerError(f"FUSEDEMBED_ADMIN_KEY_FILE: cannot read {secret}: "
                              f"{err.strerror}") from err
        if not key:
            raise ServerError(f"FUSEDEMBED_ADMIN_KEY_FILE: {secret} is empty")
        return key
    path = run_dir / "admin-key"
    if not path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host=host)[0]


def free_ports(n: int, avoid: set[int] = frozenset(), host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free now, none of ``avoid`` (ports handed out earlier but not
    bound yet, which the system may hand out again)."""
    import socket

    held: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < n:
            s = socket.socket()
            held.append(s)  # kept bound until all are chosen: no port twice
            s.bind((host, 0))
            if s.getsockname()[1] not in avoid:
                ports.append(s.getsockname()[1])
        return ports
    finally:
        for s in held:
            s.close()


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def from_env(cls) -> Ports:
        env = os.environ
        return cls(int(env.get("HTTP_PORT", "8000")), int(env.get("GRPC_PORT", "8001")),
                   int(env.get("METRICS_PORT", "8002")))


def triton_distribution() -> tuple[Path, Path]:
    """The ``tritonserver`` folder to run and its shared libraries: the wheel's, or an
    installed Triton named by FUSEDEMBED_TRITON_HOME (the NGC image's /opt/tritonserver)."""
    home = os.environ.get("FUSEDEMBED_TRITON_HOME")
    if home:
        dist = Path(home)
        if not (dist / "bin" / "tritonserver").is_file():
            raise ServerError(f"FUSEDEMBED_TRITON_HOME: no bin/tritonserver in {dist}")
        return dist, dist / "lib"
    import pytriton

    package = Path(pytriton.__file__).resolve().parent
    dist, libs = package / "tritonserver", package.parent / "nvidia_pytriton.libs"
    if not (dist / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary in {dist}; reinstall nvidia-pytriton")
    return dist, libs


def python_stub() -> Path:
    """The wheel's Python backend stub for this interpreter (an installed Triton's own stub
    is built for its system Python, 3.10 in the NGC 24.10 image)."""
    import pytriton

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = (Path(pytriton.__file__).resolve().parent / "tritonserver" / "python_backend_stubs"
            / version / "triton_python_backend_stub")
    if not stub.is_file():
        raise ServerError(f"the Triton wheel has no Python backend stub for Python {version}")
    return stub


def prepare_runtime(target: Path = TRITON_DIR) -> Path:
    """Copy the server with the stub matching this Python into ``target`` (once)."""
    dist, _ = triton_distribution()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    marker = target / f".prepared-{version}"
    if not marker.is_file():
        stub = python_stub()
        shutil.rmtree(target, ignore_errors=True)
        if os.environ.get("FUSEDEMBED_TRITON_HOME"):
            # An installed Triton is gigabytes: link it, copy only the Python backend.
            (target / "backends").mkdir(parents=True)
            for entry in dist.iterdir():
                if entry.name != "backends":
                    (target / entry.name).symlink_to(entry)
            for backend in (dist / "backends").iterdir():
                if backend.name == "python":
                    shutil.copytree(backend, target / "backends" / "python", symlinks=True)
                else:
                    (target / "backends" / backend.name).symlink_to(backend)
        else:
            shutil.copytree(dist, target, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy2(stub, target / "backends" / "python" / "triton_python_backend_stub")
        marker.touch()
    return target


def stub_processes(server_pid: int, every_instance: bool = False) -> dict[str, int]:
    """The live Python stub processes under this server: model name -> pid (with
    ``every_instance``, a model's further instances as ``model#2``, ``model#3``, ...)."""
    stubs: dict[str, int] = {}
    for entry in sorted(Path("/proc").iterdir(), key=lambda e: int(e.name) if e.name.isdigit()
                        else 0):
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server_pid and argv and argv[0].endswith(b"triton_python_backend_stub"):
            name = Path(argv[1].decode()).parent.parent.name
            n = 1
            while every_instance and (name if n == 1 else f"{name}#{n}") in stubs:
                n += 1
            stubs[name if n == 1 else f"{name}#{n}"] = int(entry.name)
    return stubs


def stub_models(server_pid: int) -> set[str]:
    return set(stub_processes(server_pid))


def stub_instances(server_pid: int) -> set[str]:
    """Every live stub, a model's further instances as ``model#2``, ``model#3``, ..."""
    return set(stub_processes(server_pid, every_instance=True))


SHM_PREFIX = "triton_python_backend_shm_region_"


def orphan_regions(shm: Path = Path("/dev/shm")) -> list[Path]:
    """The Python backend's shared-memory regions no live process maps any more: what a
    killed tritonserver or stub left behind (each region is mapped by its server from the
    moment it is made, so an unmapped one belongs to nobody)."""
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            at = line.find(str(shm) + "/")
            if at != -1:
                mapped.add(line[at:].removesuffix(" (deleted)"))
    return [p for p in shm.glob(SHM_PREFIX + "*") if str(p) not in mapped]


def living_members(group: int) -> list[int]:
    """The processes of process group ``group`` that have not exited (zombies have: their
    memory, shared regions included, is already unmapped)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def free_orphan_regions() -> int:
    """Unlink the orphaned regions (they hold their memory until then); how many."""
    freed = 0
    for region in orphan_regions():
        try:
            region.unlink()
            freed += 1
        except OSError:
            pass
    return freed


class StubWatchdog(threading.Thread):
    """Keeps the service whole: starts tritonserver again when it died (with back-off),
    reloads a model one of whose Python stubs died (a crash, an OOM kill), starts a front
    again that exited, and frees the shared memory the dead left behind.

    This Triton keeps a model whose stub died READY while every request to the dead instance
    fails; reloading it through the repository API starts new stubs.
    """

    def __init__(self, server: TritonServer, interval_s: float = 1.0,
                 max_backoff_s: float = 60.0, stall_every_s: float = 5.0) -> None:
        super().__init__(name="stub-watchdog", daemon=True)
        self.server = server
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.stopped = threading.Event()
        self.python_stubs = stub_instances(server.pid)
        self.restarts: list[str] = []
        self.failed_revivals = 0
        # The stall check (ensemble/stall.py): a sample every stall_every_s; the models found
        # stalled, each time tritonserver was restarted for it.
        self.stall_every_s = stall_every_s
        self.next_sample = 0.0
        self.stalled: list[str] = []
        self.stalls: list[list[str]] = []
        self.heal_stalls = True  # False: a stall is only reported (liveness 503)

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.verdict(restarting=self.server.process is not None
                             and self.server.process.poll() is not None)
                for protocol in self.server.restart_fronts():
                    self.restarts.append(f"front:{protocol}")
                    print(f"the {protocol} front died; restarted", file=sys.stderr, flush=True)
                assert self.server.process is not None
                if self.server.process.poll() is not None:
                    self.revive()
                    continue
                if time.monotonic() >= self.next_sample:
                    self.next_sample = time.monotonic() + self.stall_every_s
                    if self.check_stall():
                        continue  # ended for a stall: revived on the next tick
                gone = self.python_stubs - stub_instances(self.server.pid)
                if not gone:
                    continue  # the repository index is asked only when a stub is gone
                dead = {stub.split("#")[0] for stub in gone}
                for model in sorted(dead & self.server.ready_models()):
                    self.server.reload(model)
                    self.restarts.append(model)
                    print(f"stub of {model} died; model reloaded", file=sys.stderr, flush=True)
                free_orphan_regions()
            except Exception as err:  # noqa: BLE001 - keep watching; say what went wrong
                print(f"stub watchdog: {err}", file=sys.stderr, flush=True)

    def check_stall(self) -> bool:
        """A sample for the stall detector; a stall ends tritonserver (True), which ``revive``
        starts again (a stub that holds a request cannot be unloaded, so the model cannot be
        reloaded alone)."""
        try:
            with urllib.request.urlopen(self.server.metrics_url, timeout=5) as answer:
                text = answer.read().decode()
        except (OSError, http.client.HTTPException):
            return False  # no sample: one that does not answer its metrics is judged later
        pending, completed = parse_metrics(text)
        stubs: dict[str, list[int]] = {}
        for name, pid in stub_processes(self.server.pid, every_instance=True).items():
            stubs.setdefault(name.split("#")[0], []).append(pid)
        self.stalled = self.server.stall.add(
            Sample(time.monotonic(), pending, completed, cpu_seconds(stubs)))
        if not self.stalled or not self.heal_stalls:
            return False
        self.verdict()
        self.stalls.append(self.stalled)
        print(f"stalled: requests pending and none completed in {', '.join(self.stalled)} "
              f"for {self.server.stall.window_s:.0f} s; restarting tritonserver",
              file=sys.stderr, flush=True)
        assert self.server.process is not None
        os.killpg(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait()
        return True

    def verdict(self, restarting: bool = False) -> None:
        write_verdict(self.server.verdict_path, self.stalled, restarting,
                      self.failed_revivals)

    def revive(self) -> None:
        """tritonserver exited: start it again on its ports (the fronts keep the public ones
        and answer 503 / UNAVAILABLE meanwhile); after a failed try, wait 1, 2, 4, ... s.
        Meanwhile the verdict says "restarting" every second: live, while it is tried."""
        assert self.server.process is not None
        code = self.server.process.returncode
        print(f"tritonserver exited with code {code}; starting it again", file=sys.stderr,
              flush=True)
        start = time.monotonic()
        self.stalled = []  # a restart under way: live while it is tried
        done = threading.Event()

        def beat() -> None:
            while True:
                self.verdict(restarting=True)
                if done.wait(1.0):
                    return

        beating = threading.Thread(target=beat, name="verdict", daemon=True)
        beating.start()
        try:
            self.server.relaunch()
        except ServerError as err:
            self.failed_revivals += 1
            backoff = min(self.max_backoff_s, 2.0 ** (self.failed_revivals - 1))
            print(f"tritonserver did not come back ({err}); next try in {backoff:.0f} s",
                  file=sys.stderr, flush=True)
            self.stopped.wait(backoff)
            return
        finally:
            done.set()
            beating.join()
        self.failed_revivals = 0
        self.python_stubs = stub_instances(self.server.pid)
        self.server.stall.forget()
        self.stalled = []
        self.verdict()
        self.restarts.append("tritonserver")
        print(f"tritonserver serving again in {time.monotonic() - start:.1f} s",
              file=sys.stderr, flush=True)


@dataclass
class TritonServer:
    """A tritonserver process on loopback; ``start`` returns once every model is ready."""

    repository: Path = REPOSITORY
    ports: Ports = field(default_factory=Ports.from_env)
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()
    admin_key: str | None = field(default_factory=admin_key)
    host: str = field(default_factory=lambda: os.environ.get("FUSEDEMBED_HOST", "127.0.0.1"))
    process: subprocess.Popen | None = None
    watchdog: StubWatchdog | None = None
    # Triton's own HTTP and gRPC ports on loopback (free ones when not given); the public
    # ports are the fronts'.
    triton_ports: Ports | None = None
    fronts: dict[str, subprocess.Popen] = field(default_factory=dict)
    stall: StallDetector = field(default_factory=StallDetector)
    # OpenTelemetry traces (off unless OTEL_EXPORTER_OTLP_ENDPOINT or ..._TRACES_ENDPOINT is
    # set): Triton's OpenTelemetry mode, exporting over OTLP/HTTP.
    tracing: TraceSettings = field(default_factory=TraceSettings.from_env)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _admin_request(self, path: str, body: bytes = b"{}") -> bytes:
        headers = {"Content-Type": "application/json"}
        if self.admin_key:
            headers |= admin_headers("http", self.admin_key)
        request = urllib.request.Request(f"http://{self.triton_http_url}{path}", data=body,
                                         headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.read()

    def ready_models(self) -> set[str]:
        import json

        index = json.loads(self._admin_request("/v2/repository/index"))
        return {m["name"] for m in index if m.get("state") == "READY"}

    def reload(self, model: str) -> None:
        """Unload and load again: a load of an unchanged loaded model would be a no-op."""
        self._admin_request(f"/v2/repository/models/{model}/unload",
                            b'{"parameters": {"unload_dependents": false}}')
        self._admin_request(f"/v2/repository/models/{model}/load")

    def command(self, runtime: Path) -> list[str]:
        assert self.triton_ports is not None
        host, inner = self.host, self.triton_ports
        restrict = []
        if self.admin_key is not None:
            rule = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={self.admin_key}"
            restrict = [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
        return [
            str(runtime / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={runtime / 'backends'}",
            f"--cache-directory={runtime / 'caches'}",
            f"--cache-config=local,size={CACHE_BYTES}",
            # Loopback only: the public ports are the fronts' (ensemble.front).
            f"--http-address={LOOPBACK}", f"--http-port={inner.http}",
            f"--grpc-address={LOOPBACK}", f"--grpc-port={inner.grpc}",
            f"--metrics-address={host}", f"--metrics-port={self.ports.metrics}",
            "--allow-cpu-metrics=true",
            # p50/p90/p95/p99 per model (nv_*_summary_us) beside the duration counters: the
            # dashboard's latency percentiles.
            "--metrics-config=summary_latencies=true",
            "--strict-readiness=true",
            # configs/built.pbtxt (written by the build) adds the weights' provenance.
            "--model-config-name=built",
            "--exit-timeout-secs=20",
            # Explicit control: every model loads at start; later loads and unloads (a new
            # FuseMoE version) go through the model-repository API, behind the admin key.
            "--model-control-mode=explicit", "--load-model=*",
            *restrict,
            *self.tracing.triton_args(),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        _, libs = triton_distribution()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
        # The stub imports packages through the first python3 on PATH: this venv's.
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        env.pop("PYTHONPATH", None)
        env.update({k: v for k, v in RETURNING_MALLOC.items() if k not in env})
        return env

    def launch(self, mode: str = "wb") -> None:
        """The tritonserver process, on its loopback ports (free ones the first time)."""
        runtime = prepare_runtime()
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        if self.triton_ports is None:
            # Not the public ports: the fronts bind those only later.
            http, grpc = free_ports(2, {self.ports.http, self.ports.grpc, self.ports.metrics})
            self.triton_ports = Ports(http, grpc, self.ports.metrics)
        log = open(self.log_path, mode) if self.log_path else None  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(runtime), env=self.environment(), cwd=str(RUN_DIR),
            stdout=log or None, stderr=subprocess.STDOUT if log else None,
            start_new_session=True)  # own process group: stop() reaches every stub

    def relaunch(self, timeout: float = 300.0) -> None:
        """After tritonserver died: its process group killed (stubs that outlived it), the
        shared memory they held freed, the server started again and ready."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        # SIGKILL is delivered, not yet done: a stub still maps its regions until it exits.
        deadline = time.monotonic() + 10.0
        while living_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        free_orphan_regions()
        self.launch("ab")
        try:
            self.wait_ready(timeout, self.triton_http_url,
                            self.watchdog.stopped if self.watchdog else None)
        except ServerError:
            if self.process.poll() is None:  # not ready in time: ends as if it had died
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            raise

    def start(self, timeout: float = 300.0) -> None:
        self.launch()
        try:
            self.wait_ready(timeout, self.triton_http_url)
            write_verdict(self.verdict_path, [])  # the watchdog keeps it fresh from here on
            for protocol in FRONTS:
                self.start_front(protocol)
            # Both fronts: a gRPC client right after start() met a front still starting.
            self.wait_ready(60.0, self.http_url)
            self.wait_ready(60.0, self.grpc_url, protocol="grpc")
        except BaseException:
            self.stop()
            raise
        self.watchdog = StubWatchdog(self)
        self.watchdog.start()

    def start_front(self, protocol: str) -> None:
        """The public ``protocol`` port: ``python -m ensemble.front``."""
        public = self.ports.http if protocol == "http" else self.ports.grpc
        # Beside Triton's log, never in it (Triton writes its own at its own offset).
        log = (open(self.log_path.with_name(f"front-{protocol}.log"), "ab")  # noqa: SIM115
               if self.log_path else None)
        self.fronts[protocol] = subprocess.Popen(
            [sys.executable, "-m", "ensemble.front", protocol,
             "--listen", f"{self.host}:{public}", "--triton-http", self.triton_http_url,
             "--triton-grpc", self.triton_grpc_url, "--verdict", str(self.verdict_path)],
            cwd=str(ROOT), stdout=log or None, stderr=subprocess.STDOUT if log else None)

    def restart_fronts(self) -> list[str]:
        """Start again each front that exited; the protocols restarted."""
        dead = [p for p, process in self.fronts.items() if process.poll() is not None]
        for protocol in dead:
            self.start_front(protocol)
        return dead

    @property
    def verdict_path(self) -> Path:
        """The watchdog's liveness verdict, read by the HTTP front (one per server)."""
        where = self.log_path.parent if self.log_path else RUN_DIR
        return where / f"liveness-{self.ports.http}.json"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.ports.metrics}/metrics"

    @property
    def http_url(self) -> str:
        """The public HTTP port (the front)."""
        return f"{self._client_host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        """The public gRPC port (the front)."""
        return f"{self._client_host}:{self.ports.grpc}"

    @property
    def triton_http_url(self) -> str:
        """Triton's own HTTP, on loopback: for the launcher and for measuring the front."""
        assert self.triton_ports is not None
        return f"{LOOPBACK}:{self.triton_ports.http}"

    @property
    def triton_grpc_url(self) -> str:
        """Triton's own gRPC, on loopback: the gateway's (its requests are built, not
        relayed)."""
        assert self.triton_ports is not None
        return f"{LOOPBACK}:{self.triton_ports.grpc}"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def ready(self, url: str | None = None) -> bool:
        """Ready as clients see it (through the front), or at ``url``."""
        try:
            with urllib.request.urlopen(f"http://{url or self.http_url}/v2/health/ready",
                                        timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError):
            return False  # another server on the port answers something else: not ready

    def grpc_ready(self, url: str | None = None) -> bool:
        """Ready as a gRPC client sees it: ServerReady through the gRPC front (or ``url``)."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(url or self.grpc_url)
        try:
            return bool(client.is_server_ready(client_timeout=2))
        except InferenceServerException:
            return False  # not listening yet, or Triton behind it not ready
        finally:
            client.close()

    def serving(self) -> bool:
        """Ready through every front: a client of either protocol would be served now."""
        return self.ready() and self.grpc_ready()

    def wait_ready(self, timeout: float, url: str,
                   cancel: threading.Event | None = None, protocol: str = "http") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise ServerError("stopped while waiting for tritonserver")
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode}"
                                  + (f"; see {self.log_path}" if self.log_path else ""))
            for name, front in self.fronts.items():
                if front.poll() is not None:
                    raise ServerError(f"the {name} front exited with code "
                                      f"{front.returncode}"
                                      + (f"; see {self.log_path}" if self.log_path else ""))
            if (self.grpc_ready(url) if protocol == "grpc" else self.ready(url)):
                return
            time.sleep(0.5)
        raise ServerError(f"not ready at {url} after {timeout:.0f} s")

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, wait for a clean exit, then kill the whole process group (stubs too).
        Returns tritonserver's exit code (negative: the signal that ended it; None: it was
        not running)."""
        if self.watchdog is not None:
            self.watchdog.stopped.set()
            self.watchdog.join()
            self.watchdog = None
        for front in self.fronts.values():
            if front.poll() is None:
                front.terminate()
            try:
                front.wait(10)
            except subprocess.TimeoutExpired:
                front.kill()
                front.wait()
        self.fronts.clear()
        if self.process is None:
            return None
        pgid = self.process.pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        code = self.process.poll()  # before the group is killed: None if SIGTERM did not end it
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        if code is None:
            code = self.process.returncode
        self.process = None
        return code


@dataclass
class Gateway:
    """``fusedembed gateway`` as a child process talking to ``triton_grpc``."""

    triton_grpc: str
    port: int = 8080
    host: str = field(default_factory=lambda: os.environ.get("FUSEDEMBED_HOST", "127.0.0.1"))
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    env: dict[str, str] | None = None  # its environment (default: this process's)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.log_path, "wb") if self.log_path else None  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fusedembed_client.gateway", "--triton-url", self.triton_grpc,
             "--host", self.host, "--port", str(self.port), *self.extra_args],
            stdout=log or None, stderr=subprocess.STDOUT if log else None, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"the gateway exited with code {self.process.returncode}"
                                  + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                with urllib.request.urlopen(f"{self.url}/info", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # answering: 401 when it needs an API key
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        self.stop()
        raise ServerError(f"the gateway did not answer on {self.url} within {timeout:.0f} s")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


GATEWAY_PORT = 8080  # the gateway's default port (the images, compose and Kubernetes use it)


def gateway_port() -> int | None:
    """GATEWAY_PORT (default 8080); "off" or "0" for no gateway."""
    value = os.environ.get("GATEWAY_PORT", str(GATEWAY_PORT)).strip().lower()
    return None if value in ("off", "0", "") else int(value)


def usage_text(server: TritonServer, gateway: Gateway | None = None) -> str:
    if server.admin_key is None:
        admin = "repository, shared-memory, logging and trace APIs open (FUSEDEMBED_OPEN_ADMIN=1)"
    else:
        where = next((name for name in ("FUSEDEMBED_ADMIN_KEY", "FUSEDEMBED_ADMIN_KEY_FILE")
                      if os.environ.get(name)), str(RUN_DIR / "admin-key"))
        admin = (f"repository, shared-memory, logging and trace APIs need the header "
                 f"{ADMIN_HEADER}: the key in {where}")
    curl = (f"\n  curl {gateway.url}/v1/embeddings -H 'Content-Type: application/json' "
            """-d '{"model": "fusedembed", "input": "hello world"}'""" if gateway else "")
    cli = Path(sys.executable).parent / "fusedembed"
    try:
        cli = cli.relative_to(Path.cwd())
    except ValueError:
        pass
    openai = (f"\n  OpenAI   {gateway.url}/v1/embeddings   (also /embed, /health, /info, /metrics)"
              if gateway else "")
    tracing = server.tracing
    traces = (f"\n  traces   {tracing.endpoint} (OTLP/HTTP; {tracing.share:g} of requests, "
              f"services {tracing.service}-triton and {tracing.service}-gateway)"
              if tracing.enabled else "")
    return f"""fusedembed is ready.
  HTTP     http://{server.http_url}   (KServe v2: POST /v2/models/fused_text/infer)
  gRPC     {server.grpc_url}{openai}
  metrics  http://{server._client_host}:{server.ports.metrics}/metrics{traces}
  admin    {admin}

  {cli} embed "hello world" --url {server.http_url}
  {cli} embed "hello world" --protocol grpc --url {server.grpc_url}{curl}

Press Ctrl-C to stop."""


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=REPOSITORY,
                        help="model repository to serve (default: the project's)")
    args = parser.parse_args(argv)
    try:
        server = TritonServer(args.repository.resolve())
        port = gateway_port()
        if port in (server.ports.http, server.ports.grpc, server.ports.metrics):
            raise ServerError(f"GATEWAY_PORT {port} is one of Triton's ports; move it or "
                              "set GATEWAY_PORT=off")
    except (ServerError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"starting tritonserver on {server.host} (http {server.ports.http}, "
          f"grpc {server.ports.grpc}, metrics {server.ports.metrics}) ...", flush=True)
    start = time.perf_counter()
    try:
        server.start()
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"ready in {time.perf_counter() - start:.1f} s", flush=True)
    gateway = None
    try:
        if port is not None:
            gateway = Gateway(server.triton_grpc_url, port, server.host)
            gateway.start()
        print(usage_text(server, gateway), flush=True)
        while not stopping:  # the watchdog brings tritonserver, stubs and fronts back
            if gateway is not None and gateway.process is not None \
                    and gateway.process.poll() is not None:
                print(f"the gateway exited with code {gateway.process.returncode}",
                      file=sys.stderr)
                return 1
            time.sleep(0.5)
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if gateway is not None:
            gateway.stop()
        print("stopping tritonserver ...", flush=True)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

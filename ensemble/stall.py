"""A stalled pipeline, seen from outside: requests wait and none completes.

Triton's own health endpoints say only that the process is up. The launcher takes a
``Sample`` every few seconds (Triton's pending and completed request counters per model, and
the CPU time of each Python model's stubs) and ``StallDetector`` names the models that are
stalled:

- **hung**: for ``window_s`` the model had requests pending at every sample, completed none,
  and its stubs used less than ``idle_cpu`` of a core: a stub that waits on something that
  never comes (a deadlock, a stopped process, a lost request);
- **stuck**: for ``busy_window_s`` it had requests pending and completed none, whatever its
  CPU: a stub that spins. Longer, because one legitimate batch of long texts at full size can
  compute for tens of seconds without completing a request.

A model without stubs (an ensemble) is judged by the second rule only; its steps are Python
models, judged by both. Triton counts a request as pending until an instance starts on it, so
a hang is seen once a request waits behind the held instances; requests held inside them with
nothing queued behind are not pending, and are bounded by the client's timeout and the
breaker instead. Pure logic on samples, so that it is unit-tested without a server.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

PENDING = "nv_inference_pending_request_count"
COMPLETED = ("nv_inference_request_success", "nv_inference_request_failure")


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    pending: dict[str, float]  # model -> requests pending now
    completed: dict[str, float]  # model -> requests completed (success and failure) so far
    cpu_s: dict[str, float] = field(default_factory=dict)  # model -> its stubs' CPU seconds


@dataclass
class StallDetector:
    window_s: float = 30.0
    idle_cpu: float = 0.02  # of one core, over the window
    busy_window_s: float = 300.0
    samples: deque[Sample] = field(default_factory=deque)

    def add(self, sample: Sample) -> list[str]:
        """Record a sample; the models stalled as of it, sorted."""
        self.samples.append(sample)
        while len(self.samples) > 2 and sample.at - self.samples[1].at >= self.busy_window_s:
            self.samples.popleft()
        return sorted(m for m in sample.pending if self._stalled(m))

    def forget(self) -> None:
        """After a restart: the counters start again from zero."""
        self.samples.clear()

    def _since(self, seconds: float) -> list[Sample]:
        """The samples of the last ``seconds``, starting at one at least that old; [] if the
        history is shorter."""
        last = self.samples[-1].at
        start = None
        for i in range(len(self.samples) - 1, -1, -1):
            if last - self.samples[i].at >= seconds:
                start = i
                break
        return [] if start is None else list(self.samples)[start:]

    def _stalled(self, model: str) -> bool:
        for seconds, judge_cpu in ((self.window_s, True), (self.busy_window_s, False)):
            span = self._since(seconds)
            if not span or any(s.pending.get(model, 0.0) <= 0 for s in span):
                continue
            first, last = span[0], span[-1]
            if last.completed.get(model, 0.0) != first.completed.get(model, 0.0):
                continue
            if not judge_cpu:
                return True
            if model in first.cpu_s and model in last.cpu_s:
                used = last.cpu_s[model] - first.cpu_s[model]  # < 0: its stubs were replaced
                if 0 <= used < self.idle_cpu * (last.at - first.at):
                    return True
        return False


def parse_metrics(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """Pending and completed requests per model from Triton's metrics text."""
    wanted = (PENDING, *COMPLETED)
    lines = "\n".join(line for line in text.splitlines()
                      if line.startswith(wanted) or line.startswith(
                          tuple(f"# TYPE {w} " for w in wanted)))
    pending: dict[str, float] = {}
    completed: dict[str, float] = {}
    for family in text_string_to_metric_families(lines):
        for s in family.samples:
            model = s.labels.get("model")
            if model is None:
                continue
            if s.name == PENDING:
                pending[model] = pending.get(model, 0.0) + s.value
            elif s.name.removesuffix("_total") in COMPLETED:
                completed[model] = completed.get(model, 0.0) + s.value
    return pending, completed


def cpu_seconds(pids_by_model: dict[str, Iterable[int]], proc: Path = Path("/proc"),
                ) -> dict[str, float]:
    """User and system CPU seconds of each model's processes (those that are gone: 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for model, pids in pids_by_model.items():
        total = 0.0
        for pid in pids:
            try:
                fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        used[model] = total
    return used


# The launcher's verdict, for the HTTP front's /v2/health/live: written by the watchdog every
# second, so that a launcher that hangs or died is not live either.
HEARTBEAT_MAX_AGE_S = 15.0
# A restart in progress is live (the launcher heals; a probe that restarted the container
# would only start the same load over) until this many tries have failed.
MAX_FAILED_RESTARTS = 3


def write_verdict(path: Path, stalled: list[str], restarting: bool = False,
                  failed_restarts: int = 0, now: float | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"at": time.time() if now is None else now, "stalled": stalled,
                               "restarting": restarting, "failed_restarts": failed_restarts}))
    tmp.replace(path)


@dataclass(frozen=True)
class Liveness:
    fault: str | None  # why it is not live; None: live
    restarting: bool = False  # live because tritonserver is being started again


def read_verdict(path: Path, now: float | None = None,
                 max_age_s: float = HEARTBEAT_MAX_AGE_S) -> Liveness:
    """The launcher's verdict at ``path``."""
    try:
        verdict = json.loads(path.read_text())
        age = (time.time() if now is None else now) - float(verdict["at"])
        stalled = list(verdict["stalled"])
        restarting = bool(verdict.get("restarting", False))
        failed = int(verdict.get("failed_restarts", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return Liveness("the launcher's watchdog has not reported")
    if age > max_age_s:
        return Liveness(f"the launcher's watchdog has not reported for {age:.0f} s")
    if stalled:
        return Liveness(f"stalled: requests pending and none completed in "
                        f"{', '.join(stalled)}")
    if failed >= MAX_FAILED_RESTARTS:
        return Liveness(f"tritonserver did not come back after {failed} restarts")
    return Liveness(None, restarting)

"""A new FuseMoE version goes live through the repository API while requests flow."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np
import pytest
import torch

from ensemble import fusemoe, rollout
from ensemble.server import Ports, TritonServer, free_ports
from export.artifacts import Manifest, manifest_path
from export.build import embedder_fingerprints
from export.registry import CACHED_MODEL, FUSEMOE, FUSEMOE_MODEL
from fusedembed_client import FusedEmbedClient, FusedEmbedError

pytestmark = pytest.mark.server

T0 = 1_700_000_000
TEXTS = ["rolling out new fusion weights", "while traffic keeps flowing",
         "no request may fail", "every answer names its version"]


def swap_repository(source: Path, target: Path) -> Path:
    """The repository as links, with fusemoe and fused_text_cached folders of their own to
    add versions to."""
    target.mkdir()
    for model in source.iterdir():
        if not model.is_dir():
            continue
        if model.name not in (FUSEMOE_MODEL, CACHED_MODEL):
            (target / model.name).symlink_to(model)
            continue
        (target / model.name).mkdir()
        for child in ("config.pbtxt", "configs", "1"):
            if (model / child).exists():
                (target / model.name / child).symlink_to(model / child)
    return target


@pytest.fixture(scope="module")
def swap_server(repository, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("swap")
    repo = swap_repository(repository, tmp / "repo")
    srv = TritonServer(repo, Ports(*free_ports(3)), tmp / "triton.log")
    srv.start(timeout=600)
    yield srv
    srv.stop()


@dataclasses.dataclass
class Traffic:
    """Client threads sending requests until stopped; every answer and error recorded."""

    server: TritonServer
    protocols: tuple[str, ...] = ("http", "grpc", "http", "grpc")
    versions: list[list[str]] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def run(self, i: int, protocol: str) -> None:
        url = self.server.http_url if protocol == "http" else self.server.grpc_url
        with FusedEmbedClient(url, protocol) as client:
            n = 0
            while not self.stop.is_set():
                texts = TEXTS[: 1 + n % len(TEXTS)]
                try:
                    out = client.embed_batch(texts, [T0] * len(texts))
                    self.versions[i] += [e.fusion_version for e in out]
                except FusedEmbedError as err:
                    self.failures.append(f"{protocol}: {err}")
                n += 1

    def __enter__(self) -> Self:
        self.versions = [[] for _ in self.protocols]
        self.threads = [threading.Thread(target=self.run, args=(i, p), daemon=True)
                        for i, p in enumerate(self.protocols)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def wait(self, predicate, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, "traffic did not reach the expected state"
            assert not self.failures, self.failures[:3]
            time.sleep(0.2)


def test_a_new_version_goes_live_with_zero_failed_requests(swap_server, repository, reference,
                                                           tmp_path):
    repo = swap_server.repository
    old = Manifest.read(manifest_path(repo / FUSEMOE_MODEL / "1", fusemoe.WEIGHTS_STEM)).version
    new = "swap-test-2"
    model_b = fusemoe.seeded(dataclasses.replace(FUSEMOE, seed=FUSEMOE.seed + 1))
    fusemoe.save(model_b, tmp_path / "b", new,
                 extra={"embedder_fingerprints": embedder_fingerprints(repository)})

    with FusedEmbedClient(swap_server.http_url, model=CACHED_MODEL) as cached:
        cached.embed_batch(TEXTS, [T0] * len(TEXTS))  # old answers now in the cache
    with Traffic(swap_server) as traffic:
        traffic.wait(lambda: all(len(v) >= 3 for v in traffic.versions), 120)
        start = time.monotonic()
        version = rollout.rollout(tmp_path / "b", swap_server.http_url, repo,
                                  swap_server.admin_key)
        swap_s = time.monotonic() - start
        traffic.wait(lambda: all(v[-1:] == [new] and v.count(new) >= 3
                                 for v in traffic.versions), 120)
    assert traffic.failures == []
    assert version == 2
    answers = sum(len(v) for v in traffic.versions)
    for seen in traffic.versions:
        # Each client saw the old version, then the new one, never back.
        switch = seen.index(new)
        assert set(seen[:switch]) == {old} and set(seen[switch:]) == {new}, seen
    print(f"hot swap: load call {swap_s:.1f} s, {answers} answers, 0 failures")
    assert rollout.served_versions(swap_server.http_url) == ["2"]

    # The new answers are checkpoint B's fusion of the same blocks.
    with FusedEmbedClient(swap_server.http_url) as client:
        served = client.embed_batch(TEXTS, [T0] * len(TEXTS))
    x = torch.from_numpy(reference.block_matrix(TEXTS, np.full(len(TEXTS), T0)))
    with torch.inference_mode():
        expected = model_b(x).fused.numpy()
    cosine = np.sum(np.stack([e.vector for e in served]) * expected, axis=1)
    assert np.all(cosine >= 0.9999), cosine
    # The cached entry point moved to a new version with the swap: no old answer is served.
    with FusedEmbedClient(swap_server.http_url, model=CACHED_MODEL) as cached:
        repeat = cached.embed_batch(TEXTS, [T0] * len(TEXTS))
    cosine = np.sum(np.stack([e.vector for e in repeat]) * expected, axis=1)
    assert np.all(cosine >= 0.9999), cosine
    assert rollout.versions(repo, CACHED_MODEL) == [1, 2]


def test_a_checkpoint_trained_on_other_blocks_is_refused(swap_server, tmp_path):
    fusemoe.save(fusemoe.seeded(), tmp_path / "c", "other-blocks",
                 extra={"embedder_fingerprints": {"E1": "something else"}})
    with pytest.raises(rollout.RolloutError, match="trained on other blocks"):
        rollout.rollout(tmp_path / "c", swap_server.http_url, swap_server.repository,
                        swap_server.admin_key)
    assert rollout.versions(swap_server.repository) in ([1], [1, 2])

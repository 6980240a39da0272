"""Our own metrics on Triton's metrics port move exactly as known requests say they must."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from ensemble.pii import TYPES, scrub_texts
from export.registry import EMBEDDERS, Input

pytestmark = pytest.mark.server

TEXTS = [
    "Mail jane.doe@example.com or call +1 (415) 555-0100 about card 4111 1111 1111 1111.",
    # Longer than every model's token limit but Longformer's: several blocks truncate it.
    " ".join(f"word{i} in a long passage" for i in range(400)),
    "no personal data here",
]


def scrape(server) -> dict[tuple[str, tuple], float]:
    url = f"http://{server._client_host}:{server.ports.metrics}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def delta(after, before, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in after, f"no series {name}{labels}"
    return after[key] - before.get(key, 0.0)


def test_custom_metrics_count_known_requests(server):
    before = scrape(server)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = [grpcclient.InferInput("TEXT", [len(TEXTS), 1], "BYTES"),
              grpcclient.InferInput("TIMESTAMP", [len(TEXTS), 1], "INT64")]
    inputs[0].set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.full((len(TEXTS), 1), 1_700_000_000, dtype=np.int64))
    outputs = [grpcclient.InferRequestedOutput(n)
               for n in ("SELECTED_EXPERTS", "TRUNCATED", "FUSION_VERSION")]
    result = client.infer("fused_text", inputs, outputs=outputs)
    after = scrape(server)

    _, redactions = scrub_texts(TEXTS)
    assert redactions.sum() >= 3  # the positive control: the first text holds PII
    for kind, count in zip(TYPES, redactions.sum(axis=0)):
        assert delta(after, before, "fusedembed_pii_redactions_total", type=kind) == count, kind

    truncated = result.as_numpy("TRUNCATED")
    assert truncated.any() and not truncated.all()
    for j, spec in enumerate(EMBEDDERS):
        if spec.input is Input.TOKENS:
            assert (delta(after, before, "fusedembed_truncations_total", block=spec.id)
                    == truncated[:, j].sum()), spec.id

    selected = result.as_numpy("SELECTED_EXPERTS")
    for expert in range(8):
        assert (delta(after, before, "fusedembed_expert_selections_total", expert=str(expert))
                == (selected == expert).sum()), expert

    version = result.as_numpy("FUSION_VERSION")[0, 0].decode()
    assert after[("fusedembed_fusion_version_info", (("version", version),))] == 1.0

"""What only fusedembed knows, as Prometheus metrics on Triton's metrics port.

Made with the Python backend's custom-metrics API (``pb_utils.MetricFamily``): Triton serves
them beside its own ``nv_*`` metrics. Every label value is created when a model loads, so
each series exists (at 0) before the first request and ``rate()`` is defined from the start.
Instances of a model share one series per label set.

- ``fusedembed_pii_redactions_total{type}``: PII spans replaced by a typed placeholder.
- ``fusedembed_truncations_total{block}``: texts a token embedder cut to its limit (TRUNCATE
  true), counted where FuseMoE fuses them; an answer from the response cache is not counted.
- ``fusedembed_failsafe_missing_blocks_total{block}``: blocks the fail-safe entry point had
  to leave out because their embedder failed or was late.
- ``fusedembed_breaker_state{block}``: the fail-safe's circuit breaker per embedder:
  0 closed, 1 open, 2 half-open.
- ``fusedembed_breaker_transitions_total{block,to}``: its changes of state, by the state
  entered (``closed``, ``open``, ``half-open``).
- ``fusedembed_expert_selections_total{expert}``: items routed to each FuseMoE expert.
- ``fusedembed_fusion_version_info{version}``: 1 for the FuseMoE checkpoint being served.
"""

from __future__ import annotations

from collections.abc import Iterable

import triton_python_backend_utils as pb_utils

PII_REDACTIONS = "fusedembed_pii_redactions_total"
TRUNCATIONS = "fusedembed_truncations_total"
FAILSAFE_MISSING = "fusedembed_failsafe_missing_blocks_total"
EXPERT_SELECTIONS = "fusedembed_expert_selections_total"
BREAKER_STATE = "fusedembed_breaker_state"
BREAKER_TRANSITIONS = "fusedembed_breaker_transitions_total"
FUSION_VERSION_INFO = "fusedembed_fusion_version_info"


class LabelledCounter:
    """A counter family with one label, every value of which is created up front."""

    def __init__(self, name: str, description: str, label: str, values: Iterable[str]) -> None:
        self.family = pb_utils.MetricFamily(name=name, description=description,
                                            kind=pb_utils.MetricFamily.COUNTER)
        self.metrics = {v: self.family.Metric(labels={label: v}) for v in values}

    def add(self, value: str, amount: float) -> None:
        if amount > 0:
            self.metrics[value].increment(float(amount))


class VersionInfo:
    """A gauge at 1 labelled with the version an instance serves. It lives as long as its
    instance: a hot swap unloads the old version's and loads the new one's."""

    def __init__(self, name: str, description: str, version: str) -> None:
        self.family = pb_utils.MetricFamily(name=name, description=description,
                                            kind=pb_utils.MetricFamily.GAUGE)
        self.metric = self.family.Metric(labels={"version": version})
        self.metric.set(1.0)


class BreakerMetrics:
    """The state gauge and the transition counter of the fail-safe's circuit breakers."""

    def __init__(self, blocks: Iterable[str], states: Iterable[str]) -> None:
        blocks, states = list(blocks), list(states)
        self.state_family = pb_utils.MetricFamily(
            name=BREAKER_STATE, description="Circuit breaker of each embedder in the fail-safe "
            "entry point: 0 closed, 1 open (skipped), 2 half-open (probing)",
            kind=pb_utils.MetricFamily.GAUGE)
        self.transition_family = pb_utils.MetricFamily(
            name=BREAKER_TRANSITIONS, description="Changes of state of the fail-safe's circuit "
            "breakers, by the state entered", kind=pb_utils.MetricFamily.COUNTER)
        self.states = {b: self.state_family.Metric(labels={"block": b}) for b in blocks}
        self.transitions = {(b, s): self.transition_family.Metric(labels={"block": b, "to": s})
                            for b in blocks for s in states}
        for gauge in self.states.values():
            gauge.set(0.0)

    def moved(self, block: str, value: int, to: str) -> None:
        self.states[block].set(float(value))
        self.transitions[(block, to)].increment(1.0)

"""PII scrubbing before tokenization: typed placeholders and a count per type.

Rules are applied in the order of ``RULES`` (bearer tokens and API keys before anything
that could match inside them; payment cards, which must pass the Luhn check, before phone
numbers). A rule-based scrubber, because the NLP-based ones (Presidio) need a spaCy model
download at run time, which an offline server cannot do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# The order of the REDACTIONS output of the ensemble (a contract with clients).
TYPES = ("EMAIL", "PHONE", "SSN", "CARD", "API_KEY", "BEARER_TOKEN", "IP")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> bool:
    digits = re.sub(r"[ -]", "", match.group(0))
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    accept: Callable[[re.Match[str]], bool] | None = None
    keep_group: int | None = None  # keep this group's text before the placeholder


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
RULES: tuple[Rule, ...] = (
    Rule("BEARER_TOKEN", re.compile(r"(\bBearer\s+)[A-Za-z0-9\-._~+/]{8,}=*", re.IGNORECASE),
         keep_group=1),
    Rule("API_KEY", re.compile(
        r"\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}"
        r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|sk_live_[0-9A-Za-z]{16,})")),
    Rule("API_KEY", re.compile(
        r"(\b(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|password)"
        r"\s*[:=]\s*[\"']?)[^\s\"']{8,}", re.IGNORECASE), keep_group=1),
    Rule("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")),
    Rule("IP", re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.])")),
    Rule("IP", re.compile(
        r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![0-9A-Fa-f:])"
        r"|(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}"
        r"[0-9A-Fa-f]{1,4}(?![0-9A-Fa-f:])")),
    Rule("CARD", re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)"), accept=_card),
    Rule("SSN", re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")),
    Rule("PHONE", re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?!\w)"
        r"|(?<![\w+])\+\d{1,3}(?:[\s.-]?\d{2,4}){2,5}(?!\w)")),
)


@dataclass(frozen=True)
class Scrubbed:
    text: str
    counts: dict[str, int]

    def vector(self) -> list[int]:
        return [self.counts.get(t, 0) for t in TYPES]


def scrub(text: str) -> Scrubbed:
    counts = dict.fromkeys(TYPES, 0)
    for rule in RULES:
        def replace(m: re.Match[str], rule: Rule = rule) -> str:
            if rule.accept is not None and not rule.accept(m):
                return m.group(0)
            counts[rule.kind] += 1
            kept = m.group(rule.keep_group) if rule.keep_group else ""
            return f"{kept}[{rule.kind}]"

        text = rule.pattern.sub(replace, text)
    return Scrubbed(text, counts)


def scrub_texts(texts: list[str], enabled: bool = True) -> tuple[list[str], np.ndarray]:
    """The texts with PII replaced (when ``enabled``) and the counts [N, len(TYPES)] int32."""
    if not enabled:
        return list(texts), np.zeros((len(texts), len(TYPES)), dtype=np.int32)
    results = [scrub(t) for t in texts]
    counts = np.array([r.vector() for r in results], dtype=np.int32).reshape(-1, len(TYPES))
    return [r.text for r in results], counts

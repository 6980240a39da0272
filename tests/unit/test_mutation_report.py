"""perf/mutation.py's own logic: which survivors an equivalence rule explains."""

from __future__ import annotations

from perf import mutation

FUSEMOE = next(m for m in mutation.MODULES if m.name == "fusemoe")
PII = next(m for m in mutation.MODULES if m.name == "pii")


def patch(before: str, after: str) -> str:
    return f"--- a\n+++ b\n@@ -1 +1 @@\n-{before}\n+{after}\n"


def test_a_rule_explains_only_its_module_function_and_change():
    doubled = patch("    if d > 9:", "    if d >= 9:")
    rule = mutation.explained(PII, "ensemble.pii.x_luhn_valid__mutmut_14", doubled)
    assert rule is not None and "even" in rule.reason
    assert mutation.explained(PII, "ensemble.pii.x_scrub__mutmut_1", doubled) is None
    assert mutation.explained(FUSEMOE, "ensemble.fusemoe.x_luhn_valid__mutmut_1",
                              doubled) is None
    assert mutation.explained(PII, "ensemble.pii.x_luhn_valid__mutmut_1",
                              patch("    if d > 9:", "    if d > 10:")) is None


def test_only_added_lines_are_matched():
    removed_only = "--- a\n+++ b\n-    x = y.reshape(-2)\n+    x = y\n"
    assert mutation.added_lines(removed_only) == "    x = y"
    assert mutation.explained(PII, "ensemble.pii.x_scrub_texts__mutmut_20",
                              removed_only) is None
    assert mutation.explained(PII, "ensemble.pii.x_scrub_texts__mutmut_20",
                              patch("a.reshape(-1, 7)", "a.reshape(-2, 7)")) is not None


def test_every_module_has_its_source_and_layout():
    for module in mutation.MODULES:
        assert module.source.is_file(), module
    client = next(m for m in mutation.MODULES if m.name == "client")
    assert client.layout == mutation.CLIENT_LAYOUT
    assert client.source == mutation.ROOT / "client" / "fusedembed_client" / "client.py"

"""Deliberate faults in a scratch copy of the built repository, against the server tier.

    python -m perf.mutation_served [--faults pii_off ...]   # make mutation-served

Each fault is a copy of model_repository (links, with the faulted model's folder its own)
that is wrong in one way a user would suffer from. The server tier runs against it
(FUSEDEMBED_TEST_REPOSITORY; ``-x``: it stops at the first failure) and must fail; the
container tests are left out (they build an image of the project's own repository). Writes
the table (fault, the test that failed first, time to it) into perf/reports/mutation.md
under "Served faults", and perf/results/mutation-served.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from export.build import linked_repository
from export.registry import ENSEMBLE_MODEL, FUSEMOE_MODEL, PREPROCESS_MODEL
from export.repository import REPOSITORY
from perf import provenance

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "perf" / "reports" / "mutation.md"
RESULTS = ROOT / "perf" / "results" / "mutation-served.json"
SCRATCH = ROOT / ".run" / "mutation-served"
SECTION = "## Served faults"
CRASH_EVERY = 50  # a stub that crashes on every 50th request
# The tier's broad, quick checks first (served vectors against the references, validation,
# the gateway), then the rest of it: a fault is found in minutes, not at the end of the tier.
FIRST = ["tests/server/test_fused_text.py", "tests/server/test_validation.py",
         "tests/server/test_gateway.py"]
CONTAINER = "tests/server/test_container.py"  # builds an image of the project's repository


def own_folder(repo: Path, model: str) -> Path:
    """``repo/model/1`` made a folder of its own (its entries links to the built ones), so
    that files in it can be replaced; the model folder likewise."""
    folder = repo / model
    source = folder.resolve()
    if folder.is_symlink():
        folder.unlink()
        folder.mkdir()
        for child in source.iterdir():
            (folder / child.name).symlink_to(child)
    version = folder / "1"
    if version.is_symlink():
        built = version.resolve()
        version.unlink()
        version.mkdir()
        for child in built.iterdir():
            (version / child.name).symlink_to(child)
    return version


def replace(path: Path, text: str) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)


def no_edit(cfg: mc.ModelConfig) -> None:
    return None


def another_fusemoe(repo: Path) -> None:
    """fusemoe/1 holds another checkpoint: the seeded initialisation."""
    from ensemble import fusemoe

    version = own_folder(repo, FUSEMOE_MODEL)
    for name in ("fusemoe.safetensors", "fusemoe.manifest.json"):
        (version / name).unlink()
    fusemoe.save(fusemoe.seeded(), version, fusemoe.SEEDED_VERSION, extra={"init": "seeded"})


def swapped_blocks(cfg: mc.ModelConfig) -> None:
    """fused_text's wiring: E8's and E11's outputs (both 384 wide) swapped."""
    if cfg.name != ENSEMBLE_MODEL:
        return
    steps = {s.model_name: s for s in cfg.ensemble_scheduling.step}
    a, b = steps["e08_graph"].output_map, steps["e11_entity"].output_map
    for key in set(a) & set(b):
        a[key], b[key] = b[key], a[key]


def unnormalised(repo: Path) -> None:
    """FuseMoE answers FUSED three times as long (left unnormalised)."""
    replace(own_folder(repo, FUSEMOE_MODEL) / "model.py", '''"""Fault (perf/mutation_served.py): FUSED not normalised."""

from ensemble.serving.fusemoe import TritonPythonModel as Served


class TritonPythonModel(Served):
    def response(self, outputs, names=None):
        if "FUSED" in outputs:
            outputs = dict(outputs, FUSED=outputs["FUSED"] * 3.0)
        return super().response(outputs, names)
''')


def crashing_stub(repo: Path) -> None:
    """E9's stub exits on every 50th request (the watchdog reloads it)."""
    replace(own_folder(repo, "e09_hdc") / "model.py", f'''"""Fault (perf/mutation_served.py): the stub crashes on every {CRASH_EVERY}th request."""

import os

from ensemble.serving.custom_embedder import TritonPythonModel as Served


class TritonPythonModel(Served):
    requests = 0

    def execute(self, requests):
        before = TritonPythonModel.requests
        TritonPythonModel.requests += len(requests)
        if TritonPythonModel.requests // {CRASH_EVERY} > before // {CRASH_EVERY}:
            os._exit(1)
        return super().execute(requests)
''')


def pii_off(cfg: mc.ModelConfig) -> None:
    """PII scrubbing switched off in the first step."""
    if cfg.name == PREPROCESS_MODEL:
        cfg.parameters["pii_scrubbing"].string_value = "off"


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    edit: Callable[[mc.ModelConfig], None] = no_edit
    files: Callable[[Path], None] | None = None


FAULTS = [
    Fault("another_fusemoe", "another FuseMoE checkpoint (the seeded init) in fusemoe/1",
          files=another_fusemoe),
    Fault("swapped_blocks", "E8 and E11 swapped in fused_text's wiring", swapped_blocks),
    Fault("unnormalised", "FUSED left unnormalised (x3)", files=unnormalised),
    Fault("crashing_stub", f"E9's stub crashes on every {CRASH_EVERY}th request",
          files=crashing_stub),
    Fault("pii_off", "PII scrubbing switched off", pii_off),
]


def faulted(fault: Fault) -> Path:
    repo = SCRATCH / fault.name
    shutil.rmtree(repo, ignore_errors=True)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    linked_repository(REPOSITORY, repo, fault.edit, f"fault: {fault.what}")
    if fault.files is not None:
        fault.files(repo)
    return repo


def run(fault: Fault, timeout_s: float) -> dict:
    repo = faulted(fault)
    junit = SCRATCH / f"{fault.name}.xml"
    env = os.environ | {"FUSEDEMBED_TEST_REPOSITORY": str(repo)}
    rest = sorted(str(t.relative_to(ROOT)) for t in (ROOT / "tests" / "server").glob("test_*.py"))
    files = FIRST + [t for t in rest if t not in FIRST and t != CONTAINER]
    command = [sys.executable, "-m", "pytest", *files, "-m", "server and not gpu", "-x",
               "-q", "-p", "no:cacheprovider", "--timeout=900", f"--junitxml={junit}"]
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        code, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired as err:
        code, tail = None, str(err)
    seconds = time.monotonic() - start
    failed, passed = [], 0
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(name)
            elif case.find("skipped") is None:
                passed += 1
    return {"fault": fault.name, "what": fault.what, "exit": code, "failed": failed,
            "passed_before": passed, "seconds": seconds, "caught": bool(failed),
            "tail": tail}


def write_section(rows: list[dict]) -> Path:
    """The served-fault table in perf/reports/mutation.md (after the mutmut part)."""
    lines = [SECTION, "",
             ("Command: `make mutation-served` (`python -m perf.mutation_served`). Each fault is "
              "a scratch copy of the built repository; the server tier runs against it "
              "(`pytest tests/server -x`, its broad checks first, container tests left out) and "
              "must fail. Time: from the start of the run (tritonserver's start included) to "
              "its first failure."), "",
             ("| fault | caught | first test that failed | tests passed before it | "
              "time to first failure (s) |"), "|---|---|---|---:|---:|"]
    for r in rows:
        first = f"`{r['failed'][0]}`" if r["failed"] else "none"
        lines.append(f"| {r['what']} | {'yes' if r['caught'] else 'NO'} | {first} | "
                     f"{r['passed_before']} | {r['seconds']:.0f} |")
    caught = sum(r["caught"] for r in rows)
    lines += ["", f"{caught} of {len(rows)} faults caught.", ""]
    text = REPORT.read_text() if REPORT.is_file() else "# Mutation testing\n\n"
    text = re.sub(rf"\n{SECTION}\n(?:.|\n)*?(?=\n## |\Z)", "\n", text).rstrip() + "\n\n"
    return provenance.write(REPORT, text + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", nargs="*", choices=[f.name for f in FAULTS])
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds a fault's run may take")
    parser.add_argument("--report-only", action="store_true",
                        help="write the table again from perf/results/mutation-served.json")
    args = parser.parse_args(argv)
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    for fault in FAULTS:
        if args.report_only or (args.faults and fault.name not in args.faults):
            continue
        row = run(fault, args.timeout)
        print(f"{fault.name}: caught={row['caught']} first={row['failed'][:1]} "
              f"{row['seconds']:.0f} s", flush=True)
        rows = [r for r in rows if r["fault"] != fault.name] + [row]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=1))
    order = [f.name for f in FAULTS]
    rows.sort(key=lambda r: order.index(r["fault"]))
    print(f"report: {write_section(rows)}")
    return 0 if all(r["caught"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Mutation testing of the core of our own logic against the unit tier (mutmut).

    python -m perf.mutation                     # every module (hours on 2 cores)
    python -m perf.mutation --modules client    # some of them
    python -m perf.mutation --report-only       # the report again from mutmut's results

mutmut makes small changes (mutants) to each function of the listed modules and runs the unit
tests that cover it; a mutant the tests do not fail on "survived". The modules under
``ensemble/`` and ``export/`` run from the project root with the ``[tool.mutmut]`` settings of
pyproject.toml. The client's modules run from ``.mutation-client/``, a layout (written here,
git-ignored) where ``fusedembed_client`` sits at the top as it is imported: mutmut names a
module by its path, and ``client/fusedembed_client/...`` would never be the module the tests
load. Tests that need the built model repository are skipped (FUSEDEMBED_MUTATION): a mutated
build must not write it.

Writes perf/reports/mutation.md (mutants per module, killed, survived, time; each survivor
with its diff, under the reason it cannot be told apart when one of EQUIVALENT explains it)
and perf/results/mutation.json. Not part of ``make test``.
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
import tomllib
from dataclasses import dataclass
from pathlib import Path

from perf import provenance

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "perf" / "reports"
RESULTS = ROOT / "perf" / "results"
CLIENT_LAYOUT = ROOT / ".mutation-client"
GOAL = 0.90  # the share of mutants killed in every module


@dataclass(frozen=True)
class Module:
    name: str
    path: str  # as mutmut sees it, relative to its layout
    layout: Path

    @property
    def source(self) -> Path:
        return (ROOT / "client" / self.path) if self.layout == CLIENT_LAYOUT else ROOT / self.path


MODULES = [Module("fusemoe", "ensemble/fusemoe.py", ROOT),
           Module("validation", "ensemble/validation.py", ROOT),
           Module("pii", "ensemble/pii.py", ROOT),
           Module("encodings", "ensemble/encodings.py", ROOT),
           Module("failsafe", "ensemble/serving/failsafe.py", ROOT),
           Module("registry", "export/registry.py", ROOT),
           Module("client", "fusedembed_client/client.py", CLIENT_LAYOUT),
           Module("backend", "fusedembed_client/gateway/backend.py", CLIENT_LAYOUT)]

# The client layout's unit tests (the main layout's are in pyproject.toml).
CLIENT_TESTS = ["tests/unit/test_client.py", "tests/unit/test_client_requests.py",
                "tests/unit/test_gateway.py", "tests/unit/test_gateway_backend.py"]

# killed: the tests failed; timeout: they did not end (an endless loop is caught); the rest
# are what mutmut calls them (stats.status_by_exit_code).
KILLED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout",
          152: "timeout", 255: "timeout", -9: "killed", -11: "killed"}
STATUS = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          37: "type check", None: "not checked"}


@dataclass(frozen=True)
class Equivalent:
    """A survivor explained: a mutant of ``function`` (a substring of mutmut's name) whose
    changed lines match ``changed`` behaves as the original for every input the code can
    get, for ``reason``."""

    module: str
    function: str
    changed: str  # a regular expression over the mutant's added lines
    reason: str


NEGATIVE_SIZE = "numpy takes any negative size as the one it works out: -2 reshapes as -1 does"
EQUIVALENT: list[Equivalent] = [
    *(Equivalent(m.name, "", r"reshape\((1, )?-2", NEGATIVE_SIZE) for m in MODULES),
    *(Equivalent(m.name, "", r'code\("UTF-8"\)', "codec names are case-insensitive")
      for m in MODULES),
    Equivalent("client", "", r"for (s|n) in (timestamps|sequences)\], (dtype=None)?\)",
               "numpy makes an array of Python ints int64 on this 64-bit Linux"),
    Equivalent("client", "_infer", r'(sparse|token_vectors): bool = True,|'
               r'encoding: str = "(XXfloatXX|FLOAT)"\)',
               "its only caller, embed_batch, passes every argument: the defaults are never "
               "used"),
    Equivalent("client", "", r'"status", lambda: 0\)\(\) or ""',
               "0 or \"\" and None or \"\" are both \"\""),
    Equivalent("client", "_sparse_tokenizer", r'split\("\.", (2)?\)\[0\]',
               "the first part of a split is the same whatever the number of splits"),
    Equivalent("backend", "_block_number", r"if match else 1",
               "only the block outputs (E1..E12, numbers 1 to 12) are kept from the sorted "
               "list: where the other outputs sort does not matter"),
    Equivalent("backend", "triton_error", r'"status", lambda: (None|"XXXX")\)\(\) or ""|'
               r'"status", lambda: ""\)\(\) or "XXXX"',
               "the status is only compared with gRPC codes by their ending: \"\", None and "
               "\"XXXX\" match none of them"),
    Equivalent("backend", "triton_error", r'"message", lambda: None\)\(\) or err',
               "without a message() the text is str(err) either way"),
    Equivalent("backend", "from_configs", r'fused\.get\("output", (None)?\)',
               "an entry point without outputs has no FUSED: the catalog fails either way "
               "(KeyError or TypeError)"),
    Equivalent("backend", "from_configs", r"outputs\[FUSED\] (>= 0|> 1) else",
               "FUSED's last dimension is its width or -1 (variable), never 0 or 1"),
    Equivalent("backend", "_chunked", r"(?m)^\s+None\)$",
               "each chunk's call waits until the same deadline and answers the same 504"),
    Equivalent("backend", "_counted", r"reshape\(None\)",
               "TOKENS is rows x 1: a one-element row converts to int as its value does "
               "(numpy 1.26 only warns)"),
    Equivalent("pii", "luhn_valid", r"if d >= 9:",
               "a doubled digit is even, so it is never 9: > 9 and >= 9 agree"),
    Equivalent("pii", "luhn_valid", r"total -= d",
               "a sum and its negative are divisible by 10 together"),
    Equivalent("pii", "_card", r"<= len\(digits\) <= 20",
               "the card pattern matches at most 19 digits"),
    Equivalent("fusemoe", "", r"\.to\(None\)|device=None|devices=None|"
               r"torch\.arange\(kmax, \)|for e in EMBEDDERS\], \)|"
               r"int\(k\), dtype=torch\.long, \)|\.to\(dtype=torch\.long\)|"
               r"x\.shape\[0\], None\)",
               "FuseMoE runs in float32 on the CPU here, where a device or dtype of None (the "
               "default) changes nothing; only a GPU run could tell them apart, and GPU paths "
               "are unmeasured here"),
    Equivalent("fusemoe", "_per_row_k", r"torch\.full\(\(rows,\), int\(k\), "
               r"(dtype=None, device=device|device=device)\)",
               "torch.full of an int is int64 (long) without a dtype"),
    Equivalent("fusemoe", "", r"dim=\+1|unsqueeze\(\+1\)",
               "on these 2-D tensors (1-D for unsqueeze) dimension 1 is the last: +1 and -1 "
               "name the same dimension"),
    Equivalent("fusemoe", "forward", r"torch\.topk\(probs, kmax, \)|normalize\(out, "
               r"(p=None, dim=-1|p=2\.0, |dim=-1)\)",
               "the argument left out is its default: topk's last dimension, normalize's "
               "2-norm over dimension 1 of a 2-D tensor"),
    Equivalent("fusemoe", "forward", r"kept \* kept\.sum|kept\.sum\(dim=None",
               "the expert weights are rescaled per row (or for the whole batch) before FUSED "
               "is normalised per row: its direction does not change"),
    Equivalent("fusemoe", "load", r"load_state_dict\(tensors, \)",
               "strict=True is load_state_dict's default"),
    Equivalent("fusemoe", "__init__", r"nn\.LayerNorm\(cfg\.input_dim, \)",
               "FuseMoE's layer_norm_eps is 1e-5, LayerNorm's default"),
    Equivalent("fusemoe", "_within_capacity", r"rows\.numel\(\) >= capacity",
               "with exactly capacity rows, the best capacity of them are all of them"),
    Equivalent("validation", "", r"\[0\]\[:2\]|\)\[:2\]",
               "the loop raises on its first item: a second one in the slice is never reached"),
    Equivalent("validation", "controls", r"np\.full\(rows, FUSEMOE\.(top_k|temperature), "
               r"(dtype=None)?\)",
               "numpy fills an int as int64 and a float as float64, and the temperature is "
               "made float32 where the controls are returned"),
    Equivalent("validation", "positions", r"np\.asarray\(timestamps, (dtype=None)?\)|"
               r"dtype=np\.int64\)\.reshape\(None\)",
               "the timestamps given are the validated int64 ones, one per row"),
    Equivalent("validation", "output_settings", r"rows, 1\)\.reshape\(None\)",
               "DIMENSIONS as rows x 1 compares, indexes and converts to int as its flat "
               "copy does (numpy 1.26 only warns that int() of a one-element array is "
               "deprecated)"),
    Equivalent("registry", "usage_tokenizer", r'tokenizer or "XXXX"',
               "E1 is a token model, so it has a tokenizer (_check): the fallback is never "
               "taken"),
    Equivalent("validation", "output_settings", r"np\.asarray\(encoding, (dtype=None)?\)",
               "a BYTES item is a bytes either way (numpy's bytes_ is one)"),
    Equivalent("failsafe", "run", r"present\[:, j\] = None",
               "numpy stores None as False in a bool array"),
    Equivalent("failsafe", "", r'spec\.tokenizer or "XXXX"',
               "every token embedder names its tokenizer family (export/registry.py _check)"),
    Equivalent("failsafe", "run", r"ServiceError\(None\)|probe had not answered XX|"
               r"PROBE HAD NOT ANSWERED|XXwhen the other blocks hadXX|WHEN THE OTHER BLOCKS HAD",
               "a block's reason is shown only when it is required, and a required block's "
               "probe is always waited for: the reason of a probe still out is never shown"),
    Equivalent("failsafe", "run", r"task\.exception\(\) if \(not task\.cancelled\(\)\) or "
               r"True",
               "nothing cancels a block's task (its deadline ends it with TimeoutError), so "
               "the cancelled branch is never taken"),
    Equivalent("backend", "step_in", r"sorted\(self\.steps, ",
               "model names are word characters: one never matches inside a longer one at a "
               "word boundary, so the order they are tried in does not matter"),
    Equivalent("backend", "_counted", r"popitem\(last=None\)",
               "None is false: the oldest entry goes, as with last=False"),
    Equivalent("backend", "_counted", r'digest_size=17|blake2b\(t\.encode\("utf-8"\), \)',
               "the digest only keys the remembered counts: any fixed digest keys them alike"),
    Equivalent("backend", "", r"astype\(np\.float32, (copy=True)?\)",
               "copying or not gives the same values"),
    Equivalent("client", "dot", r"assume_unique=(None|False)|other\.indices, return_indices",
               "SPLADE indices are unique: intersecting them as unique or not finds the same "
               "terms"),
    Equivalent("client", "", r"axis=\+1|\.sum\(\+1\)",
               "on these 2-D arrays axis 1 is the last: +1 and -1 name the same axis"),
    Equivalent("client", "request_tensors", r"(?m)^\s+(dtype=None)?\)\)\)$",
               "tritonclient takes a numpy bytes_ array for a BYTES input as it takes an "
               "object array and serialises both alike (checked for HTTP, binary and JSON, "
               "and gRPC)"),
    Equivalent("client", "_infer", r"decode_binary\(codes, (None|9 \* codes\.shape\[1\])\)",
               "a slice at or past the end of the unpacked bits keeps all of them, as "
               "8 x the bytes does"),
    Equivalent("client", "_send", r"delay >= self\.retry\.deadline_s",
               "the sleep's end is a float of the monotonic clock plus a random jitter: it "
               "equals the deadline with probability zero"),
    Equivalent("client", "int8_similarity", r"np\.asarray\((a|b), (None)?\)",
               "the other operand is int32: the product is int32 or wider either way, with the "
               "same values"),
]


def mutmut_settings(layout: Path) -> dict:
    return tomllib.loads((layout / "pyproject.toml").read_text())["tool"]["mutmut"]


def write_client_layout() -> None:
    """``.mutation-client/``: links to the packages and tests, and a pyproject.toml that is
    ours with the client's mutmut settings."""
    CLIENT_LAYOUT.mkdir(exist_ok=True)
    links = {"fusedembed_client": ROOT / "client" / "fusedembed_client", "tests": ROOT / "tests",
             "ensemble": ROOT / "ensemble", "export": ROOT / "export", "perf": ROOT / "perf"}
    for name, target in links.items():
        link = CLIENT_LAYOUT / name
        if not link.is_symlink():
            if link.exists():
                shutil.rmtree(link)
            link.symlink_to(target)
    main = (ROOT / "pyproject.toml").read_text()
    settings = mutmut_settings(ROOT)
    client = {
        "source_paths": ["fusedembed_client"],
        "only_mutate": [m.path for m in MODULES if m.layout == CLIENT_LAYOUT],
        "also_copy": ["ensemble", "export", "perf"],
        "pytest_add_cli_args": settings["pytest_add_cli_args"],
        "pytest_add_cli_args_test_selection": CLIENT_TESTS,
        "timeout_multiplier": settings["timeout_multiplier"]}
    section = "[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in client.items())
    text = re.sub(r"\[tool\.mutmut\]\n(?:[^\[].*\n|\n)*", section + "\n", main)
    (CLIENT_LAYOUT / "pyproject.toml").write_text(text)


# What every mutant's tests run with: one thread per library (the children share the cores).
MUTANT_ENV = {"FUSEDEMBED_MUTATION": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_mutmut(layout: Path, modules: list[Module], children: int,
               names: list[str] | None = None) -> float:
    """mutmut on ``modules`` of one layout (only the mutants ``names`` where given); the
    seconds it took."""
    env = os.environ | MUTANT_ENV
    names = names or [m.path[:-3].replace("/", ".") + ".*" for m in modules]
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children),
                    *names], cwd=layout, env=env, check=False)
    return time.monotonic() - start


def results(module: Module) -> dict:
    """mutmut's verdict on every mutant of ``module``: {name: (status, seconds)}."""
    meta = module.layout / "mutants" / (module.path + ".meta")
    if not meta.is_file():
        return {}
    data = json.loads(meta.read_text())
    durations = data.get("durations_by_key", {})
    out = {}
    for name, code in data["exit_code_by_key"].items():
        status = KILLED.get(code) or STATUS.get(code, f"exit {code}")
        out[name] = (status, float(durations.get(name, 0.0)))
    return out


def diff(module: Module, name: str) -> str:
    shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=module.layout,
                           capture_output=True, text=True, check=False)
    return shown.stdout.strip() or shown.stderr.strip()


def added_lines(patch: str) -> str:
    return "\n".join(line[1:] for line in patch.splitlines()
                     if line.startswith("+") and not line.startswith("+++"))


def explained(module: Module, name: str, patch: str) -> Equivalent | None:
    added = added_lines(patch)
    for rule in EQUIVALENT:
        if (rule.module == module.name and rule.function in name
                and re.search(rule.changed, added)):
            return rule
    return None


def check_timeouts(modules: list[Module], done: frozenset[str] = frozenset(),
                   wall_s: int = 300) -> dict[str, str]:
    """Each mutant mutmut stopped on its CPU-time limit, run again against the tests that
    cover its function without that limit (``wall_s`` instead): "survived" when they pass
    (the limit was too tight: mutmut adds no allowance for what the tests' threads and start
    cost), "timeout" when they still do not end, else "killed". Those in ``done`` were
    checked before."""
    verdicts = {}
    for module in modules:
        base = module.layout / "mutants"
        stats = json.loads((base / "mutmut-stats.json").read_text())
        covering = stats["tests_by_mangled_function_name"]
        for name, (status, _) in sorted(results(module).items()):
            if status != "timeout" or name in done:
                continue
            tests = sorted(covering.get(name.rsplit("__mutmut_", 1)[0], []))
            env = os.environ | MUTANT_ENV | {"MUTANT_UNDER_TEST": name}
            run = subprocess.run(["timeout", str(wall_s), sys.executable, "-m", "pytest", "-q",
                                  "-x", "-p", "no:cacheprovider", "-m",
                                  "not server and not trained and not gpu", *tests],
                                 cwd=base, env=env, capture_output=True, check=False)
            verdicts[name] = {0: "survived", 124: "timeout"}.get(run.returncode, "killed")
            print(f"{verdicts[name]:9s} {name}", flush=True)
    return verdicts


def summarise(modules: list[Module], seconds: dict[str, float],
              timeouts: dict[str, str] | None = None) -> dict:
    """Each module's verdicts; a timeout run again by ``check_timeouts`` counts as what that
    run found."""
    out = {}
    for module in modules:
        verdicts = {name: ((timeouts or {}).get(name, status) if status == "timeout"
                           else status, seconds_)
                    for name, (status, seconds_) in results(module).items()}
        counts: dict[str, int] = {}
        for status, _ in verdicts.values():
            counts[status] = counts.get(status, 0) + 1
        survivors = []
        for name, (status, _) in sorted(verdicts.items()):
            if status in ("survived", "no tests", "suspicious"):
                patch = diff(module, name)
                rule = explained(module, name, patch)
                survivors.append({"name": name, "status": status, "diff": patch,
                                  "equivalent": rule.reason if rule else None})
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        checked = sum(v for k, v in counts.items() if k != "not checked")
        out[module.name] = {
            "path": str(module.source.relative_to(ROOT)), "mutants": len(verdicts),
            "counts": counts, "killed": killed, "checked": checked,
            "killed_share": killed / checked if checked else None,
            "test_seconds": sum(s for _, s in verdicts.values()),
            "run_seconds": seconds.get(module.name), "survivors": survivors}
    return out


def write_report(summary: dict, runs: dict[str, list[str]] | None = None) -> Path:
    lines = ["# Mutation testing: the unit tier against mutants of our own logic", "",
             ("Command: `make mutation` (`python -m perf.mutation`; `--modules` to limit it). "
              "mutmut " + mutmut_version() + " makes each mutant of the listed modules and runs "
              "the unit tests that cover the mutated function (tests needing the built "
              "repository skipped); a mutant is killed when they fail or time out. Goal: at "
              f"least {GOAL:.0%} killed in every module; every survivor killed by a new test "
              "or listed below with why it cannot be told apart. mutmut stops a mutant's "
              "tests on a CPU-time limit that can be too tight; `--check-timeouts` runs each "
              "such mutant again against the same tests with a 300 s wall limit instead, and "
              "it counts as what that run found (the timeout column holds those that still "
              "did not end). `--survivors` runs again "
              "only the last run's survivors (after tests were added); the other verdicts "
              "stand from the run named in the last column."), "",
             ("| module | mutants | killed | survived | no tests | timeout | killed share | "
              "explained survivors | unexplained | test time (s) | runs |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, m in summary.items():
        c = m["counts"]
        explained_n = sum(1 for s in m["survivors"] if s["equivalent"])
        share = "not run" if m["killed_share"] is None else f"{m['killed_share']:.1%}"
        lines.append(f"| {name} (`{m['path']}`) | {m['mutants']} | {m['killed']} | "
                     f"{c.get('survived', 0)} | {c.get('no tests', 0)} | {c.get('timeout', 0)} "
                     f"| {share} | {explained_n} | {len(m['survivors']) - explained_n} | "
                     f"{m['test_seconds']:.0f} | {'; '.join((runs or {}).get(name, []))} |")
    for name, m in summary.items():
        if not m["survivors"]:
            continue
        lines += ["", f"## {name}: survivors", ""]
        by_reason: dict[str, list[dict]] = {}
        for s in m["survivors"]:
            by_reason.setdefault(s["equivalent"] or "", []).append(s)
        for reason, group in sorted(by_reason.items(), key=lambda g: g[0] == ""):
            title = f"Equivalent: {reason}" if reason else "Not explained (tests to write)"
            lines += [f"### {title}", ""]
            for s in group:
                lines += [f"`{s['name']}` ({s['status']})", "", "```diff", s["diff"], "```", ""]
    REPORTS.mkdir(parents=True, exist_ok=True)
    report = REPORTS / "mutation.md"
    # The served faults' table (perf/mutation_served.py) stays where it is.
    served = report.read_text().partition("\n## Served faults\n") if report.is_file() else ()
    if served and served[1]:
        lines += ["", served[1].strip(), served[2].rstrip()]
    return provenance.write(report, "\n".join(lines) + "\n")


def mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", nargs="*", choices=[m.name for m in MODULES],
                        help="the modules to run (default: all)")
    parser.add_argument("--children", type=int, default=2, help="mutmut's --max-children")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from mutmut's results without running it")
    parser.add_argument("--check-timeouts", action="store_true",
                        help="run each mutant stopped on mutmut's CPU-time limit again "
                             "without it, and count it as what that run finds")
    parser.add_argument("--survivors", action="store_true",
                        help="run again only the mutants that survived the last run (after "
                             "tests were added; a changed module needs a full run)")
    args = parser.parse_args(argv)
    chosen = [m for m in MODULES if not args.modules or m.name in args.modules]
    saved = RESULTS / "mutation.json"
    before = json.loads(saved.read_text()) if saved.is_file() else {}
    seconds = before.get("run_seconds", {})
    runs: dict[str, list[str]] = before.get("runs", {})
    timeouts: dict[str, str] = before.get("timeouts", {})
    if not args.report_only:
        write_client_layout()
        at = provenance.commit()
        for layout in (ROOT, CLIENT_LAYOUT):
            group = [m for m in chosen if m.layout == layout]
            if not group:
                continue
            if args.survivors:
                names = [n for m in group for n, (status, _) in results(m).items()
                         if status == "survived" or timeouts.get(n) == "survived"]
                for n in names:  # mutmut's new verdict, checked again if it is a timeout
                    timeouts.pop(n, None)
                if names:
                    run_mutmut(layout, group, args.children, names)
                for m in group:
                    runs[m.name] = [*runs.get(m.name, [])[:1], f"survivors again at {at}"]
            else:
                took = run_mutmut(layout, group, args.children)
                for m in group:
                    seconds[m.name] = took / len(group)
                    runs[m.name] = [f"every mutant at {at}"]
    if args.check_timeouts:
        timeouts |= check_timeouts(chosen, frozenset(timeouts))
    summary = summarise(MODULES, seconds, timeouts)
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"run_seconds": seconds, "runs": runs, "timeouts": timeouts,
                                 "modules": summary}, indent=1))
    print(f"report: {write_report(summary, runs)}")
    below = [n for n, m in summary.items()
             if m["killed_share"] is not None and m["killed_share"] < GOAL]
    if below:
        print(f"below {GOAL:.0%} killed: {', '.join(below)}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the killed share per module of the last `mutmut run` (`make mutation`), from mutants/*.meta.

A mutant counts as killed when a test failed on it or it ran out of time; "no tests" are mutants no
selected test runs (they count against the module). Exits 1 when a module is below --goal percent.

    python tools/mutation_table.py [--goal 90] [--survivors]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KILLED = {1, 3, -24, 24, 152, 255, 36}  # a failing test (1), pytest internal error (3) or a timeout
SURVIVED = {0}
NO_TESTS = {5, 33}


def tally(meta: Path) -> dict[str, list[str]]:
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    out: dict[str, list[str]] = {"killed": [], "survived": [], "no tests": [], "other": [], "not checked": []}
    for key, code in codes.items():
        if code is None:
            out["not checked"].append(key)
        elif code in KILLED:
            out["killed"].append(key)
        elif code in SURVIVED:
            out["survived"].append(key)
        elif code in NO_TESTS:
            out["no tests"].append(key)
        else:
            out["other"].append(key)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", default="mutants", help="mutmut's working folder (default: mutants)")
    parser.add_argument("--goal", type=float, default=90.0, help="killed %% each module must reach (default 90)")
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants' names")
    args = parser.parse_args(argv)
    metas = sorted(Path(args.mutants).rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {args.mutants}/: run `make mutation` first", file=sys.stderr)
        return 2
    header = f"{'module':<34} {'mutants':>7} {'killed':>6} {'survived':>8} {'no tests':>8} {'other':>5} {'killed %':>8}"
    print(header)
    print("-" * len(header))
    below, total = [], {"mutants": 0, "killed": 0}
    for meta in metas:
        module = str(meta.relative_to(args.mutants))[: -len(".meta")]
        t = tally(meta)
        n = sum(len(v) for v in t.values())
        if n == 0:
            continue
        share = 100.0 * len(t["killed"]) / n
        total["mutants"] += n
        total["killed"] += len(t["killed"])
        print(
            f"{module:<34} {n:>7} {len(t['killed']):>6} {len(t['survived']):>8} {len(t['no tests']):>8} "
            f"{len(t['other']) + len(t['not checked']):>5} {share:>7.1f}%"
        )
        if share < args.goal:
            below.append(module)
        if args.survivors:
            for key in t["survived"] + t["no tests"] + t["other"]:
                print(f"    {key}")
    print("-" * len(header))
    share = 100.0 * total["killed"] / max(total["mutants"], 1)
    print(f"{'all':<34} {total['mutants']:>7} {total['killed']:>6} {'':>8} {'':>8} {'':>5} {share:>7.1f}%")
    if below:
        print(f"below {args.goal:g}% killed: {', '.join(below)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

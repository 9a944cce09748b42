"""Conformance report: every scenario against QEMU 7.2 and the simulator.

    python -m tests.conformance.report [--slow] [-q] [SCENARIO ...]

prints, per scenario, lines matched / lines total, then each mismatch and,
separately, each allowed (listed) difference.  Exit status 1 if any scenario has
a mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "tests.conformance"
# the harness imports the tests' top-level helper modules (qemu_support)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from .compare import Result, compare, format_result
from .differences import DIFFERENCES
from .harness import Scenario, record_both
from .scenarios import FAST


def all_scenarios(slow: bool) -> tuple[Scenario, ...]:
    if not slow:
        return FAST
    from .guest import GUEST, available

    if (why := available()) is not None:
        print(f"guest scenario skipped: {why}", file=sys.stderr)
        return FAST
    return (*FAST, GUEST)


async def run(scenarios: tuple[Scenario, ...]) -> list[tuple[Result, float]]:
    out = []
    for scenario in scenarios:
        start = time.monotonic()
        if scenario.slow:
            from .guest import record_guest

            recs = await record_guest()
        else:
            recs = await record_both(scenario)
        out.append((compare(scenario.name, recs["qemu"], recs["sim"]),
                    time.monotonic() - start))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="also boot a Linux guest")
    parser.add_argument("-q", "--quiet", action="store_true", help="summary lines only")
    parser.add_argument("scenario", nargs="*", help="only these scenarios")
    args = parser.parse_args(argv)
    scenarios = all_scenarios(args.slow)
    if args.scenario:
        scenarios = tuple(s for s in scenarios if s.name in args.scenario)
    results = asyncio.run(run(scenarios))
    print("== per scenario (QEMU 7.2 vs simulator, profile qemu-7.2) ==")
    for result, seconds in results:
        print(f"{format_result(result, verbose=False)}  [{seconds:.1f} s]")
    mismatched = [r for r, _ in results if r.mismatches]
    print("\n== mismatches ==")
    if not mismatched:
        print("none")
    for result in mismatched:
        print(format_result(result))
    if not args.quiet:
        print("\n== allowed differences seen ==")
        seen = False
        for result, _ in results:
            for row in result.allowed:
                seen = True
                print(f"{result.scenario} [{row.stream}] {row.allowed_by[0].what}")
                print(f"    qemu: {row.qemu!r}\n    sim:  {row.sim!r}")
        if not seen:
            print("none")
        print("\n== the differences list (tests/conformance/differences.py) ==")
        for diff in DIFFERENCES:
            print(f"- [{diff.scenario}] {diff.what}\n    reason: {diff.reason}")
    total = sum(r.total for r, _ in results)
    matched = sum(r.matched for r, _ in results)
    allowed = sum(len(r.allowed) for r, _ in results)
    print(f"\nTOTAL {matched}/{total} lines matched, {allowed} allowed, "
          f"{sum(len(r.mismatches) for r, _ in results)} mismatched")
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(main())

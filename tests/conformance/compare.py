"""Line-by-line comparison of two recordings, allowing only listed differences."""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass, field

from .differences import DIFFERENCES, Difference
from .harness import Recording
from .masking import mask


@dataclass
class Row:
    """One aligned row: QEMU's line and the simulator's (either may be missing)."""

    stream: str
    qemu: bytes | None
    sim: bytes | None
    allowed_by: list[Difference] = field(default_factory=list)


@dataclass
class Result:
    scenario: str
    matched: int = 0
    total: int = 0
    allowed: list[Row] = field(default_factory=list)
    mismatches: list[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _allowed(scenario: str, row: Row, differences: tuple[Difference, ...]) -> list[Difference]:
    """The differences allowing every line present in *row* (empty if one is not)."""
    found: list[Difference] = []
    for who, line in (("qemu", row.qemu), ("sim", row.sim)):
        if line is None:
            continue
        match = [d for d in differences if d.allows(scenario, who, line)]
        if not match:
            return []
        found += [d for d in match if d not in found]
    return found


def compare(scenario: str, qemu: Recording, sim: Recording,
            differences: tuple[Difference, ...] = DIFFERENCES) -> Result:
    result = Result(scenario)
    for stream in sorted(set(qemu) | set(sim)):
        q = [mask(line) for line in qemu.get(stream, [])]
        s = [mask(line) for line in sim.get(stream, [])]
        matcher = difflib.SequenceMatcher(None, q, s, autojunk=False)
        for op, q1, q2, s1, s2 in matcher.get_opcodes():
            if op == "equal":
                result.matched += q2 - q1
                result.total += q2 - q1
                continue
            for ql, sl in itertools.zip_longest(q[q1:q2], s[s1:s2]):
                row = Row(stream, ql, sl)
                result.total += 1
                row.allowed_by = _allowed(scenario, row, differences)
                (result.allowed if row.allowed_by else result.mismatches).append(row)
    return result


def format_result(result: Result, verbose: bool = True) -> str:
    pct = 100.0 * result.matched / result.total if result.total else 100.0
    head = (f"{result.scenario:24} {result.matched:4}/{result.total:<4} lines matched"
            f" ({pct:5.1f} %)")
    if result.allowed:
        head += f", {len(result.allowed)} allowed"
    if result.mismatches:
        head += f", {len(result.mismatches)} MISMATCHED"
    out = [head]
    if verbose:
        for row in result.mismatches:
            out.append(f"  MISMATCH [{row.stream}]")
            out.append(f"    qemu: {_show(row.qemu)}")
            out.append(f"    sim:  {_show(row.sim)}")
        for row in result.allowed:
            out.append(f"  allowed [{row.stream}] ({row.allowed_by[0].what[:60]}...)")
            out.append(f"    qemu: {_show(row.qemu)}")
            out.append(f"    sim:  {_show(row.sim)}")
    return "\n".join(out)


def _show(line: bytes | None, limit: int = 300) -> str:
    if line is None:
        return "(none)"
    text = repr(line)[2:-1]
    return text if len(text) <= limit else text[:limit] + f"... ({len(line)} bytes)"

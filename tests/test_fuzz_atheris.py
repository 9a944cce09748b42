"""Coverage-guided fuzzing with atheris, as part of the full test command."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is in the test extra (./dev test installs it)")

pytestmark = [pytest.mark.fuzz, pytest.mark.slow, pytest.mark.subprocess]

RUNS = 40_000
SCRIPT = Path(__file__).parent / "fuzz_atheris.py"


def test_codec_and_protocols_survive_coverage_guided_fuzzing(
        tmp_path: Path, figures: Callable[[str, object], None]) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), f"-runs={RUNS}", "-max_len=512", "-seed=1",
         f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", result.stderr)
    assert done is not None and int(done.group(1)) == RUNS, result.stderr[-2000:]
    figures("fuzz: atheris (libFuzzer, coverage-guided) inputs",
            f"{RUNS} in {done.group(2)} s, no failure")

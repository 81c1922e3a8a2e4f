"""README says what the code does: every setting documented, CI runs README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from monitor.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(ENVMON_[A-Z_]+)` \|", readme, flags=re.M))
    assert documented == {f"ENVMON_{name.upper()}" for name in Settings.model_fields}


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("# 2. run the tests", 1)[1].split("```", 1)[0]
    command = block.strip().splitlines()[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in [line.strip() for line in ci]

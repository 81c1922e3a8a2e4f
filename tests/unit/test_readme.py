"""README says what the code does: every setting documented, CI runs README's test command."""

from __future__ import annotations

from pathlib import Path

from monitor.core.settings import markdown_table

ROOT = Path(__file__).resolve().parents[2]


def test_readme_settings_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- settings:start", 1)[1].split("-->", 1)[1]
    table = table.split("<!-- settings:end -->", 1)[0].strip()
    assert table == markdown_table(), "run: python -m monitor.core.settings"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("# 2. run the tests", 1)[1].split("```", 1)[0]
    command = block.strip().splitlines()[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in [line.strip() for line in ci]

"""Schemathesis against the served app: the OpenAPI is what the API does.

A bounded, seeded (deterministic: the same cases every run), run with `--checks all` of the
examples, fuzzing and stateful phases, on a throwaway PostgreSQL database where the
destructive endpoints delete what they like, as an admin so that every route is reached.

The coverage phase (boundary values of every parameter) is left out of CI: on this
machine's 2 shared cores it took 206 s at 3 examples. It was run by hand, and what it found is
fixed, each with its test in test_api_contract.py (a 405 without Allow, or naming one route's
methods only; ids past 32 bits; a DMA's connections past the column; a device's status null;
true/false read as a volume of 0 or 1 m³).
To run it again, add coverage to PHASES.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, text

from monitor.api.app import create_app
from monitor.core.settings import Settings
from tests.conftest import make_key, serve
from tests.integration.test_auth import two_districts

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
PHASES = "examples,fuzzing,stateful"

# Checks left out, each because it contradicts a choice of the API or of its framework:
EXCLUDED = {
    # the API validates meaning as well as shape and answers 422 naming the field (DESIGN.md:
    # "a bad API request gets a 4xx that names the field"): an unknown metric, a site that
    # does not exist, night_to before night_from, device_id and site_id both given are
    # schema-valid and refused. (It also found PATCH /v1/rules/{id} with "description":
    # null refused: fixed, test_api.py test_a_rule_patched_with_null_clears_or_resets_the_field.)
    "positive_data_acceptance": "semantic validation beyond the schema",
    # literal paths sit beside templated ones (/v1/alerts/acknowledge beside
    # /v1/alerts/{alert_id}): GET /v1/alerts/acknowledge is a GET of an alert whose id is
    # not a number, a 422, not a 405
    "unsupported_method": "literal paths beside templated ones",
}
# the operations that can lock the run out of its own key (the stateful phase finds the
# admin in GET /v1/users and disables it); they run last, on their own
CREDENTIALS = r"^/v1/(keys/\{key_id\}|users/\{name\})$"


def _run(base: str, key: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(SCHEMATHESIS),
        "run",
        f"{base}/v1/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        ",".join(EXCLUDED),
        "--max-examples",
        "2",  # 3 took 133 s on the 2 shared cores; the goal is ~90 s
        "--seed",
        "14",
        "--generation-deterministic",  # implies no example database
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {key}",
        "--no-color",
        "--request-timeout",
        "30",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_the_api_conforms_to_its_openapi_under_schemathesis(
    pg_url: str, pg_engine: Engine, tmp_path: Path
) -> None:
    two_districts(pg_engine)
    with pg_engine.begin() as conn:
        # the run's own key far from the small ids the examples try (DELETE /v1/keys/1)
        conn.execute(text("ALTER SEQUENCE api_keys_id_seq RESTART WITH 1000003"))
    key = make_key(pg_engine, "schemathesis-admin")
    app = create_app(Settings(database_url=pg_url))
    with serve(app) as base:
        main = _run(base, key, tmp_path, "--phases", PHASES, "--exclude-path-regex", CREDENTIALS)
        last = _run(
            base, key, tmp_path, "--phases", "examples,fuzzing", "--include-path-regex", CREDENTIALS
        )
    for done in (main, last):
        assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-2000:]
    assert "Authentication failed" not in main.stdout, main.stdout[-5000:]

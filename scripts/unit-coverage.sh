#!/usr/bin/env bash
# The unit tests' coverage of the launcher: fails (exit 1, naming them) when
# the total is under 85% or any module is under 60%. Writes nothing into the
# checkout: the coverage data and report go to a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
report=$(mktemp -d)
trap 'rm -rf "$report"' EXIT
export COVERAGE_FILE="$report/.coverage"

"$python" -m pytest tests/unit -q --cov=launcher --cov-report=term --cov-report="json:$report/coverage.json"

"$python" - "$report/coverage.json" <<'PY'
import json
import sys

TOTAL_AT_LEAST, MODULE_AT_LEAST = 85, 60
report = json.load(open(sys.argv[1]))
total = report["totals"]["percent_covered"]
low = sorted((f["summary"]["percent_covered"], name) for name, f in report["files"].items()
             if f["summary"]["percent_covered"] < MODULE_AT_LEAST)
failed = False
if total < TOTAL_AT_LEAST:
    print(f"unit coverage of the launcher is {total:.1f}%, under {TOTAL_AT_LEAST}%", file=sys.stderr)
    failed = True
for percent, name in low:
    print(f"{name} is covered {percent:.1f}%, under {MODULE_AT_LEAST}%", file=sys.stderr)
    failed = True
if failed:
    sys.exit(1)
print(f"unit coverage {total:.1f}% (at least {TOTAL_AT_LEAST}%), every module at least {MODULE_AT_LEAST}%")
PY

#!/usr/bin/env bash
# The test command: installs everything (scripts/setup.sh), then runs the suite.
#   scripts/test.sh                 default suite (< 20 min on 2 cores)
#   scripts/test.sh -k partition    extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
.venv/bin/python -m pytest -q -ra --durations=15 "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$status"

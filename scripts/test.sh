#!/usr/bin/env bash
# The test suite: the default tests (a few minutes), then the real-model tests marked slow.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/t2n --version  # the releases this run tests
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" || exit $?
.venv/bin/python -m pytest -q -p no:cacheprovider -m slow "$@"
status=$?
# 5: the slow marker selected no test, which means the real-model tests went missing
[ "$status" -eq 5 ] && echo "error: no test is marked slow" >&2
exit "$status"

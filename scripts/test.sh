#!/usr/bin/env bash
# The test suite: the default tests (a few minutes), then the real-model tests marked slow.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/t2n --version  # the releases this run tests
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" || exit $?
.venv/bin/python -m pytest -q -p no:cacheprovider -m slow "$@"
status=$?
[ "$status" -eq 5 ] && exit 0  # no slow test selected
exit "$status"

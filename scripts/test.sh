#!/usr/bin/env bash
# The test suite: the default tests (a few minutes), then the real-model tests marked slow.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/t2n --version  # the releases this run tests
# the report page of 't2n analyse' is tested in a real headless browser: Debian's chromium
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (apt-get) for the browser test" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      chromium; } >/dev/null 2>&1 || echo "warning: chromium did not install" >&2
fi
export T2N_REQUIRE_BROWSER=1   # the browser test fails, rather than skips, without chromium
# one test process per core (pytest-xdist); T2N_TEST_WORKERS=0 runs them in this process
workers=(-n "${T2N_TEST_WORKERS:-auto}")
.venv/bin/python -m pytest -q -p no:cacheprovider "${workers[@]}" "$@" || exit $?
.venv/bin/python -m pytest -q -p no:cacheprovider -m slow "${workers[@]}" "$@"
status=$?
# 5: the slow marker selected no test, which means the real-model tests went missing
[ "$status" -eq 5 ] && echo "error: no test is marked slow" >&2
exit "$status"

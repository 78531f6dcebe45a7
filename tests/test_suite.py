"""The test run itself fails loudly: a missing test package, or no real-model test selected."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_missing_test_package_stops_the_run():
    hide = ("import sys, pytest; sys.modules['gguf'] = None; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_compat.py']))")
    proc = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 4   # pytest's usage error, before any test ran
    assert "the tests need gguf: run scripts/setup.sh" in proc.stdout + proc.stderr


@pytest.mark.slow   # two pytest runs of its own
def test_test_script_fails_when_no_slow_test_is_selected():
    proc = subprocess.run(["bash", "scripts/test.sh", "tests/test_compat.py", "-k",
                           "version_flag"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert "1 passed" in proc.stdout          # the default part ran
    assert proc.returncode == 5 and "error: no test is marked slow" in proc.stderr

from pathlib import Path

from t2n.bundles import ops_table

DOCS = Path(__file__).parent.parent / "docs"


def test_ops_doc_matches_registry():
    """docs/ops.md opens with the registry's table (its measured coverage follows: see
    tests/test_coverage.py)."""
    expected = ops_table(markdown=True) + "\n"
    assert (DOCS / "ops.md").read_text().startswith(expected), \
        "docs/ops.md is stale: run `.venv/bin/t2n ops --coverage --markdown --json " \
        "docs/op_coverage.json > docs/ops.md` (or scripts/bench_coverage.py --write-docs)"

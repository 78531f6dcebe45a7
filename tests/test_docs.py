from pathlib import Path

from t2n.bundles import ops_table

DOCS = Path(__file__).parent.parent / "docs"


def test_ops_doc_matches_registry():
    expected = ops_table(markdown=True) + "\n"
    assert (DOCS / "ops.md").read_text() == expected, \
        "docs/ops.md is stale: run `.venv/bin/t2n ops --markdown > docs/ops.md`"

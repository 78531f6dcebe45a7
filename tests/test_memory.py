"""Resident memory helpers: pages of file-mapped weights can be handed back and read again."""
import numpy as np
import pytest
import torch

from t2n.memory import SUPPORTED, drop_pages, drop_weight_pages

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="memory hand-back is Linux/glibc-only "
                                "(t2n/memory.py); exports elsewhere keep these pages")


def _rss_file_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def _mapped(tmp_path, n=16 << 20):
    """A float32 tensor of n values mapped privately from a file, as safetensors weights are."""
    path = tmp_path / "weights.bin"
    values = np.arange(n, dtype=np.float32) % 1000
    values.tofile(path)
    return torch.from_file(str(path), shared=False, size=n, dtype=torch.float32), values


def test_drop_pages_releases_a_mapped_weight_and_keeps_its_values(tmp_path):
    weight, values = _mapped(tmp_path)  # 64 MiB
    total = float(weight.sum())         # read every page
    before = _rss_file_kib()
    drop_pages(weight)
    after = _rss_file_kib()
    assert before - after > 48 * 1024, (before, after)
    assert float(weight.sum()) == total  # read back from the file
    np.testing.assert_array_equal(weight[-5:].numpy(), values[-5:])


def test_drop_weight_pages_of_a_module(tmp_path):
    weight, _ = _mapped(tmp_path, 4 << 20)
    layer = torch.nn.Linear(1024, 4096, bias=False)
    layer.weight = torch.nn.Parameter(weight.view(4096, 1024), requires_grad=False)
    x = torch.ones(1, 1024)
    expected = layer(x)
    before = _rss_file_kib()
    drop_weight_pages(layer)
    assert before - _rss_file_kib() > 12 * 1024
    assert torch.equal(layer(x), expected)


def test_drop_pages_leaves_heap_tensors_alone():
    t = torch.randn(1 << 20)
    copy = t.clone()
    drop_pages(t)
    drop_pages(torch.empty(0))
    drop_pages(torch.empty(3, device="meta"))
    assert torch.equal(t, copy)

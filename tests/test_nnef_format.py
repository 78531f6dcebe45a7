"""Byte-level goldens for .dat files and the graph.nnef text, and atomic bundle writing."""
import struct
import tarfile
import time

import numpy as np
import pytest

from t2n.errors import WriteError
from t2n.nnef import Graph, Input, Operation, Ref, Variable, dat, text
from t2n.nnef.bundle import write
from t2n.nnef.graph import Dim


def test_dat_header_golden_f32():
    head, data = dat.encode_array(np.arange(6, dtype=np.float32).reshape(2, 3))
    expected = (b"\x4e\xef\x01\x00"            # magic, version 1.0
                + struct.pack("<I", 24)          # data bytes
                + struct.pack("<I", 2)           # rank
                + struct.pack("<8I", 2, 3, 0, 0, 0, 0, 0, 0)
                + struct.pack("<I", 32)          # bits per item
                + struct.pack("<HH", 0, 0)       # item type float, Khronos vendor
                + bytes(32) + bytes(44))
    assert head == expected
    assert len(head) == 128
    assert bytes(data) == np.arange(6, dtype=np.float32).tobytes()


@pytest.mark.parametrize("dtype,item_type,bits", [
    (np.float16, 0, 16), (np.float64, 0, 64), (np.int64, 4, 64), (np.int32, 4, 32),
    (np.int8, 4, 8), (np.uint8, 1, 8), (np.bool_, 5, 8)], ids=lambda v: str(v))
def test_dat_item_types(dtype, item_type, bits):
    head, _ = dat.encode_array(np.zeros((4,), dtype=dtype))
    assert struct.unpack_from("<I", head, 44)[0] == bits
    assert struct.unpack_from("<H", head, 48)[0] == item_type


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.bool_, np.uint8])
def test_dat_round_trip(dtype, tmp_path):
    array = (np.arange(24) % 3).astype(dtype).reshape(2, 3, 4)
    dat.write_array(tmp_path / "t.dat", array)
    back = dat.read_array(tmp_path / "t.dat")
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_dat_rejects_rank_9():
    with pytest.raises(ValueError, match="rank 8"):
        dat.header((1,) * 9, 4, 32, 0)


@pytest.mark.parametrize("value,expected", [
    (True, "true"), (3, "3"), (1.0, "1.0"), (1e-6, "1e-06"), ("a\"b", '"a\\"b"'),
    ([1, 2], "[1, 2]"), ((0, 1), "(0, 1)"), (Ref("x"), "x"), (Dim("(S + 1)"), "(S + 1)")])
def test_literals(value, expected):
    assert text.literal(value) == expected


def test_literal_refuses_inf():
    with pytest.raises(ValueError, match="no literal"):
        text.literal(float("inf"))


def _tiny_graph():
    g = Graph()
    g.inputs.append(Input("x", "f32", (1, Dim("S"))))
    g.symbols.append("S")
    g.variables.append(Variable("w", "layer.weight", (1,), "f32", np.ones(1, np.float32)))
    g.operations.append(Operation(["y"], "mul", [Ref("x"), Ref("w")]))
    g.outputs.append("y")
    return g


def test_graph_text_golden():
    assert text.render(_tiny_graph()) == (
        "version 1.0;\n\n"
        "extension tract_registry tract_core;\n"
        "extension tract_symbol S;\n\n"
        "graph network(x) -> (y)\n{\n"
        '  x = tract_core_external(shape = [1, S], datum_type = "f32");\n'
        '  w = variable<scalar>(label = "layer.weight", shape = [1]);\n'
        "  y = mul(x, w);\n}\n")


@pytest.mark.parametrize("suffix", ["", ".tar", ".tgz"])
def test_bundle_formats(suffix, tmp_path):
    dest = tmp_path / f"b{suffix}"
    bundle = write(_tiny_graph(), dest)
    assert bundle.path == dest and dest.exists()
    if suffix:
        with tarfile.open(dest) as tar:
            assert sorted(tar.getnames()) == ["graph.nnef", "layer.weight.dat"]
    else:
        assert sorted(p.name for p in dest.iterdir()) == ["graph.nnef", "layer.weight.dat"]
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]  # no temporary left behind


@pytest.mark.parametrize("suffix", [".tar", ".tgz"])
def test_archives_are_reproducible(suffix, tmp_path):
    """The same graph packs to the same bytes (no time, owner or mode of the writer)."""
    first = write(_tiny_graph(), tmp_path / f"a{suffix}").path.read_bytes()
    (tmp_path / "x").mkdir()
    time.sleep(1.1)   # tar keeps whole seconds: the second bundle's files are newer
    second = write(_tiny_graph(), tmp_path / "x" / f"b{suffix}").path.read_bytes()
    assert first == second
    with tarfile.open(tmp_path / f"a{suffix}") as tar:
        assert {(m.mtime, m.uid, m.uname) for m in tar.getmembers()} == {(0, 0, "")}


def test_bundle_refuses_existing_then_overwrites(tmp_path):
    dest = tmp_path / "b"
    dest.mkdir()
    (dest / "old.txt").write_text("keep")
    with pytest.raises(WriteError, match="already exists"):
        write(_tiny_graph(), dest)
    assert (dest / "old.txt").exists()
    write(_tiny_graph(), dest, overwrite=True)
    assert not (dest / "old.txt").exists() and (dest / "graph.nnef").exists()


def test_bundle_failure_leaves_nothing(tmp_path):
    g = _tiny_graph()
    g.variables.append(Variable("bad", "bad", (1,), "f32", lambda: 1 / 0))
    with pytest.raises(WriteError, match="bad.dat failed with ZeroDivisionError"):
        write(g, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []

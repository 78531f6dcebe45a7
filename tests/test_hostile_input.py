"""Hostile or broken input fails with one line and exit code 2, before anything is read:
bundles whose members escape, link out or are special files, and example inputs that do not
fit the model's forward."""
import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import textwrap
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import t2n
from t2n.cli import main

HINT = "a bundle holds graph.nnef, graph.quant and .dat files under one folder"


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return torch.relu(self.fc(x))


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() points the root logger at click's captured stderr and silences warnings."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    t2n_level = logging.getLogger("t2n").level
    with warnings.catch_warnings():
        yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("t2n").setLevel(t2n_level)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid folder bundle with stored inputs/outputs (``t2n check`` reruns them)."""
    path = tmp_path_factory.mktemp("good") / "bundle"
    t2n.export(Small(), (torch.randn(2, 6),), path, dump_io=True)
    return path


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(folder: Path) -> set:
    return set(folder.rglob("*"))


# -- the check can pass ---------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["dir", "tar", "tgz"])
def test_valid_bundle_passes(good, fmt, tmp_path):
    path = good
    if fmt != "dir":
        path = tmp_path / f"bundle.{fmt}"
        with tarfile.open(path, "w:gz" if fmt == "tgz" else "w") as tar:
            tar.add(good, arcname=".")  # with a './' folder member, as GNU tar writes it
    info = cli("info", path)
    assert info.exit_code == 0, info.output
    assert "input  x: 2,6,f32" in info.stdout
    check = cli("check", path)
    assert check.exit_code == 0, check.output
    assert "ok (approximate)" in check.stdout


def test_links_inside_a_folder_bundle_pass(good, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(good, path)
    (path / "notes.txt").symlink_to("t2n.json")
    (tmp_path / "alias").symlink_to(path)
    for command in ("info", "check"):
        result = cli(command, tmp_path / "alias")
        assert result.exit_code == 0, result.output


# -- archives -------------------------------------------------------------------------------

def _file(name, data=b"evil"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


def _special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info, None


# id -> (member to add, the member named in the error, the problem)
ARCHIVE_CASES = {
    "dotdot": (lambda tag, tmp: _file(f"../{tag}"), "'../{tag}'", "escapes the bundle"),
    "dotdot-nested": (lambda tag, tmp: _file(f"sub/../../{tag}"), "'sub/../../{tag}'",
                      "escapes the bundle"),
    "absolute": (lambda tag, tmp: _file(str(tmp / tag)), "'{tmp}/{tag}'", "absolute path"),
    "symlink": (lambda tag, tmp: _special("link.dat", tarfile.SYMTYPE, "/etc/passwd"),
                "'link.dat'", "is a symbolic link (to '/etc/passwd')"),
    "hardlink": (lambda tag, tmp: _special("hard.dat", tarfile.LNKTYPE, f"../{tag}"),
                 "'hard.dat'", "is a hard link"),
    "fifo": (lambda tag, tmp: _special("pipe.dat", tarfile.FIFOTYPE), "'pipe.dat'",
             "is a FIFO"),
    "chardev": (lambda tag, tmp: _special("null.dat", tarfile.CHRTYPE), "'null.dat'",
                "is a character device"),
    "duplicate": (lambda tag, tmp: _file("graph.nnef", b"version 1.0;\n"), "'graph.nnef'",
                  "appears twice"),
}


@pytest.mark.parametrize("command", ["info", "check"])
@pytest.mark.parametrize("fmt", ["tar", "tgz"])
@pytest.mark.parametrize("case", list(ARCHIVE_CASES))
def test_hostile_archive_refused(good, case, fmt, command, tmp_path, monkeypatch):
    make, member, problem = ARCHIVE_CASES[case]
    tag = f"t2n-evil-{uuid.uuid4().hex[:8]}"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = work / f"bundle.{fmt}"
    with tarfile.open(path, "w:gz" if fmt == "tgz" else "w") as tar:
        for item in sorted(good.iterdir()):
            tar.add(item, arcname=item.name)
        tar.addfile(*make(tag, tmp_path))
    before = snapshot(tmp_path)
    result = cli(command, path)
    assert_one_line_error(result, str(path), member.format(tag=tag, tmp=tmp_path), problem,
                          HINT)
    assert snapshot(tmp_path) == before  # nothing extracted beside or above the bundle
    for folder in (tmp_path.parent, Path(tempfile.gettempdir()), Path("/")):
        assert not (folder / tag).exists()


def test_corrupt_archive_refused(good, tmp_path):
    path = tmp_path / "bundle.tgz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(good, arcname=".")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(cli("info", path), str(path))


# -- folders --------------------------------------------------------------------------------

def _outside_absolute(path, tmp):
    (path / "evil.dat").symlink_to("/etc/passwd")
    return "'evil.dat'", "links outside the bundle (to '/etc/passwd')"


def _outside_relative(path, tmp):
    (tmp / "secret.dat").write_bytes(b"secret")
    (path / "sub").mkdir()
    (path / "sub" / "w.dat").symlink_to("../../secret.dat")
    return "'sub/w.dat'", "links outside the bundle (to '../../secret.dat')"


def _outside_folder(path, tmp):
    (path / "up").symlink_to(tmp)
    return "'up'", "links outside the bundle"


def _dangling(path, tmp):
    (path / "gone.dat").symlink_to("nowhere.dat")
    return "'gone.dat'", "is a dangling link (to 'nowhere.dat')"


def _fifo(path, tmp):
    os.mkfifo(path / "pipe.dat")
    return "'pipe.dat'", "is a FIFO"


@pytest.fixture
def fifo_writer():
    """Should t2n ever open a FIFO member (which blocks inside tract, where no signal reaches),
    a writer that opens and closes it ends the wait: the test then fails instead of hanging."""
    started = []

    def start(fifo: Path):
        started.append(subprocess.Popen(["sh", "-c", ': > "$0"', str(fifo)]))
    yield start
    for proc in started:
        proc.kill()
        proc.wait()


FOLDER_CASES = {"symlink-absolute": _outside_absolute, "symlink-relative": _outside_relative,
                "symlink-folder": _outside_folder, "dangling": _dangling, "fifo": _fifo}


@pytest.mark.parametrize("command", ["info", "check"])
@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_hostile_folder_refused(good, case, command, tmp_path, fifo_writer):
    path = tmp_path / "bundle"
    shutil.copytree(good, path)
    member, problem = FOLDER_CASES[case](path, tmp_path)
    for fifo in [p for p in path.iterdir() if p.is_fifo()]:
        fifo_writer(fifo)
    before = snapshot(tmp_path)
    result = cli(command, path)
    assert_one_line_error(result, str(path), member, problem, HINT)
    assert snapshot(tmp_path) == before


def test_unreadable_stored_io_refused(good, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(good, path)
    (path / "t2n.json").write_text("{not json")
    assert_one_line_error(cli("check", path), "unreadable stored inputs/outputs", "--dump-io")


# -- example inputs -------------------------------------------------------------------------

MODELS = textwrap.dedent("""
    from torch import nn

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x, y, scale=None):
            return self.fc(x) + y
""")

F32 = np.float32
INPUT_CASES = {
    "missing": ({"x": np.ones((2, 6), F32)}, ["lack 'y'", "Two.forward(x, y, scale=...)"]),
    "extra": ({"x": np.ones((2, 6), F32), "y": np.ones((2, 3), F32), "z": np.ones(2, F32)},
              ["'z' is not a parameter", "Two.forward(x, y, scale=...)"]),
    "extra-positional": ({"arr_0": np.ones((2, 6), F32), "arr_1": np.ones((2, 3), F32),
                          "arr_2": np.ones(1, F32), "arr_3": np.ones(1, F32)},
                         ["'arr_3' has no parameter left", "Two.forward(x, y, scale=...)"]),
    "rank": ({"x": np.ones((2, 6, 1), F32), "y": np.ones((2, 3), F32)},
             ["x (2, 6, 1) float32", "Two.forward(x, y, scale=...) fails"]),
    "dtype": ({"x": np.ones((2, 6), np.int64), "y": np.ones((2, 3), F32)},
              ["x (2, 6) int64", "Two.forward(x, y, scale=...) fails"]),
    "strings": ({"x": np.array(["a", "b"]), "y": np.ones((2, 3), F32)},
                ["example input 'x'", "<U1"]),
}


@pytest.fixture
def models(tmp_path, monkeypatch):
    (tmp_path / "hostile_models.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _save(arrays, path):
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        from safetensors.numpy import save_file
        save_file(arrays, str(path))


FITTING = {"named": {"y": np.ones((2, 3), F32), "x": np.ones((2, 6), F32)},
           "positional": {"arr_0": np.ones((2, 6), F32), "arr_1": np.ones((2, 3), F32)}}


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("names", list(FITTING))
def test_fitting_example_inputs_export(models, names, suffix):
    path = models / f"inputs{suffix}"
    _save(FITTING[names], path)
    result = cli("export", "hostile_models:Two", "out", "--example-inputs", path)
    assert result.exit_code == 0, result.output
    assert "verified in tract" in result.stdout


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_misfit_example_inputs_refused(models, case, suffix):
    arrays, fragments = INPUT_CASES[case]
    if suffix == ".safetensors" and case == "strings":
        pytest.skip("safetensors cannot store string arrays")
    path = models / f"inputs{suffix}"
    _save(arrays, path)
    result = cli("export", "hostile_models:Two", "out", "--example-inputs", path)
    assert_one_line_error(result, *fragments)
    assert not (models / "out").exists()
    assert not [p for p in models.iterdir() if p.name.startswith(".out")]

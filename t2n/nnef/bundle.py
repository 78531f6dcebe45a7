"""Write a graph as a bundle: a directory, ``.tar`` or ``.tgz`` chosen by the destination suffix.

Writing is atomic: everything is built in a hidden temporary path beside the destination and
moved into place at the end, so the destination is either complete or untouched.
"""
from __future__ import annotations

import gzip
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from t2n.errors import WriteError
from t2n.nnef import dat, text
from t2n.nnef.graph import Graph

__all__ = ["Bundle", "write", "bundle_format", "staging", "publish", "write_files"]

log = logging.getLogger(__name__)


@dataclass
class Bundle:
    path: Path
    files: list[str] = field(default_factory=list)
    nbytes: int = 0
    bytes_by_storage: dict[str, int] = field(default_factory=dict)


def bundle_format(dest: Path) -> str:
    name = dest.name.lower()
    if name.endswith((".tgz", ".tar.gz")):
        return "tgz"
    if name.endswith(".tar"):
        return "tar"
    return "dir"


def write_files(graph: Graph, folder: Path, extra_files: dict[str, bytes] | None = None,
                progress=None) -> Bundle:
    """Write graph.nnef, one .dat per variable and graph.quant (if any) into ``folder``.
    Any failure becomes a WriteError naming the file."""
    current = [folder / "graph.nnef"]
    try:
        return _write_files(graph, folder, extra_files, progress, current)
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(f"cannot write {current[0]}: {e.strerror or e}",
                         "check the free space and permissions of the destination") from e
    except Exception as e:  # encoding a tensor failed: a bug
        raise WriteError(f"writing {current[0].name} failed with {type(e).__name__}: {e}",
                         "please report this t2n bug with the model; rerun with -v for the "
                         "traceback") from e


def _write_files(graph, folder, extra_files, progress, current) -> Bundle:
    bundle = Bundle(folder)
    nnef_text = text.render(graph).encode()
    (folder / "graph.nnef").write_bytes(nnef_text)
    bundle.files.append("graph.nnef")
    bundle.nbytes += len(nnef_text)
    for var in graph.variables:
        rel = f"{var.label}.dat"
        path = current[0] = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        array = var.array()
        if var.encode is not None:
            payload = var.encode(array)
            path.write_bytes(payload)
            n = len(payload)
        else:
            n = dat.write_array(path, array)
        del array
        bundle.files.append(rel)
        bundle.nbytes += n
        bundle.bytes_by_storage[var.storage] = bundle.bytes_by_storage.get(var.storage, 0) + n
        if progress is not None:
            progress(n)
    if graph.quant:
        body = "".join(f'"{k}": {v};\n' for k, v in graph.quant.items()).encode()
        (folder / "graph.quant").write_bytes(body)
        bundle.files.append("graph.quant")
        bundle.nbytes += len(body)
    for rel, payload in (extra_files or {}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(payload)
        bundle.files.append(rel)
        bundle.nbytes += len(payload)
    return bundle


def staging(dest: Path, overwrite: bool) -> Path:
    """Check the destination and make a temporary folder beside it to build the bundle in."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise WriteError(f"destination {dest} already exists",
                         "pass --overwrite (API: overwrite=True) or choose another path")
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise WriteError(f"folder {parent} does not exist", "create it first")
    try:
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".t2n-tmp", dir=parent))
    except OSError as e:
        raise WriteError(f"cannot write in {parent}: {e.strerror}",
                         "choose a writable destination") from e


def publish(folder: Path, dest: Path, tgz_level: int = 0) -> Path:
    """Move a finished bundle folder to ``dest`` (packing it if dest is .tar/.tgz).

    ``tgz_level`` is the gzip level of a .tgz. The default 0 stores without compressing:
    weights barely compress (about 7% for f32, less for f16 and 4-bit) while level 1 costs
    about 30 s per GB.
    """
    dest = Path(dest)
    fmt = bundle_format(dest)
    try:
        if fmt == "dir":
            ready = folder
        else:
            ready = folder.with_name(folder.name + "." + fmt)
            _pack(folder, ready, fmt, tgz_level)
            shutil.rmtree(folder)
        if dest.exists():
            trash = dest.with_name(f".{dest.name}.t2n-old")
            if trash.exists():
                _remove(trash)
            os.replace(dest, trash)
            try:
                os.replace(ready, dest)
            except OSError:
                os.replace(trash, dest)   # the old bundle goes back in place
                raise
            _remove(trash)
        else:
            os.replace(ready, dest)
    except OSError as e:
        raise WriteError(f"cannot publish bundle at {dest}: {e}", "check the destination") from e
    return dest


def _reproducible(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """No time, owner or permission of the machine that wrote it: the same bundle packs to the
    same bytes."""
    member.mtime, member.uid, member.gid, member.uname, member.gname = 0, 0, 0, "", ""
    member.mode = 0o644
    return member


def _pack(folder: Path, dest: Path, fmt: str, tgz_level: int) -> None:
    """``folder``'s files (sorted) as a .tar or .tgz at ``dest``, reproducibly (gzip header
    without a time either)."""
    with open(dest, "wb") as raw:
        zipped = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                               compresslevel=tgz_level) if fmt == "tgz" else None
        try:
            with tarfile.open(fileobj=zipped or raw, mode="w") as tar:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        tar.add(path, arcname=str(path.relative_to(folder)),
                                filter=_reproducible)
        finally:
            if zipped is not None:
                zipped.close()


def discard(folder: Path) -> None:
    for path in (folder, folder.with_name(folder.name + ".tar"),
                 folder.with_name(folder.name + ".tgz")):
        if path.exists():
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write(graph: Graph, dest, *, overwrite: bool = False, extra_files=None,
          tgz_level: int = 0) -> Bundle:
    """Write ``graph`` to ``dest`` atomically; returns the published :class:`Bundle`."""
    dest = Path(dest)
    folder = staging(dest, overwrite)
    try:
        bundle = write_files(graph, folder, extra_files)
        bundle.path = publish(folder, dest, tgz_level)
        return bundle
    except BaseException:
        discard(folder)
        raise

"""Read exported bundles back: `t2n info`, `t2n check`, and the supported-ops table."""
from __future__ import annotations

import io
import json
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from t2n import verify
from t2n.errors import LoadError
from t2n.quant.q4_0 import ITEM_TYPE as Q4_0_ITEM_TYPE
from t2n.quant.q8_1 import ITEM_TYPE as Q8_1_ITEM_TYPE

__all__ = ["BundleInfo", "bundle_info", "check_bundle", "ops_table", "read_member"]

_REEXPORT = ("a bundle holds graph.nnef, graph.quant and .dat files under one folder; "
             "re-export it")


def _refused(path: Path, member: str, problem: str) -> LoadError:
    return LoadError(f"bundle {path} member {member!r} {problem}", _REEXPORT)


def _member_name(raw: str) -> str:
    """An archive member's name as the bundle knows it: without ``./`` or doubled slashes."""
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    return "/".join(parts) or "."


def _archive_problem(member: tarfile.TarInfo) -> str | None:
    """Why an archive member cannot be part of a bundle, or None. Links are refused even when
    they stay inside: t2n never writes them."""
    if member.name.startswith("/"):
        return "is an absolute path"
    if ".." in member.name.split("/"):
        return "escapes the bundle"
    if member.issym():
        return f"is a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"is a hard link (to {member.linkname!r})"
    if member.ischr():
        return "is a character device"
    if member.isblk():
        return "is a block device"
    if member.isfifo():
        return "is a FIFO"
    if not (member.isfile() or member.isdir()):
        return "is neither a regular file nor a folder"
    if member.isfile() and _member_name(member.name) == ".":
        return "is a file without a name"
    return None


def _archive_members(path: Path) -> dict[str, int]:
    """Every member of a .tar/.tgz bundle checked from its header, before any is read:
    regular files and folders under one root, each named once. Returns file name -> size."""
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise LoadError(f"bundle {path} is not a readable archive: {e}", _REEXPORT) from e
    seen: set[str] = set()
    files: dict[str, int] = {}
    for m in members:
        name = _member_name(m.name)
        problem = _archive_problem(m)
        if problem is None and name in seen and name != ".":
            problem = "appears twice"
        if problem:
            raise _refused(path, m.name, problem)
        seen.add(name)
        if m.isfile():
            files[name] = m.size
    return files


def _kind(mode: int) -> str:
    kinds = [(stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")]
    return next((k for test, k in kinds if test(mode)), "not a regular file")


def _folder_members(path: Path) -> dict[str, int]:
    """Every entry of a bundle folder checked before any is read: regular files and folders,
    and symbolic links that resolve to one of them inside the bundle. Returns file -> size."""
    root = os.path.realpath(path)
    files: dict[str, int] = {}
    for folder, dirs, names in os.walk(path):  # symbolic links to folders are not entered
        for entry in sorted(dirs + names):
            full = Path(folder, entry)
            rel = full.relative_to(path).as_posix()
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                target, real = os.readlink(full), os.path.realpath(full)
                if os.path.commonpath([root, real]) != root:
                    raise _refused(path, rel, f"links outside the bundle (to {target!r})")
                if not os.path.exists(real):
                    raise _refused(path, rel, f"is a dangling link (to {target!r})")
                mode = os.stat(real).st_mode
            if stat.S_ISREG(mode):
                files[rel] = full.stat().st_size
            elif not stat.S_ISDIR(mode):
                raise _refused(path, rel, f"is {_kind(mode)}")
    return files


def _members(path: Path) -> dict[str, int]:
    """The files of a bundle, name -> size, once every member has been checked (raises
    LoadError naming the first member that escapes the bundle, is a link or special file
    pointing elsewhere, or appears twice)."""
    return _folder_members(path) if path.is_dir() else _archive_members(path)


def read_member(path: Path, name: str) -> bytes | None:
    """A file of the bundle (directory or archive), or None."""
    if path.is_dir():
        p = path / name
        return p.read_bytes() if p.is_file() else None
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if m.isfile() and _member_name(m.name) == name:
                return tar.extractfile(m).read()
    return None


def _open(path) -> Path:
    """A bundle path whose members are all checked (nothing read yet) and has graph.nnef."""
    path = Path(path)
    if not path.exists():
        raise LoadError(f"bundle {path} does not exist", "give the path t2n export wrote")
    if not path.is_dir() and not (path.is_file() and tarfile.is_tarfile(path)):
        raise LoadError(f"{path} is neither a bundle folder nor a .tar/.tgz",
                        "give the path t2n export wrote")
    if "graph.nnef" not in _members(path):
        raise LoadError(f"{path} has no graph.nnef", "give the path t2n export wrote")
    return path


def _tract_model(path: Path):
    try:
        return verify.load_tract_model(path)
    except Exception as e:  # tract raises TractError for anything it cannot load
        if type(e).__name__ != "TractError":
            raise
        raise LoadError(f"tract could not load bundle {path}: {verify.tract_error_line(e)}",
                        "re-export it; run with -v for details") from e


@dataclass
class BundleInfo:
    path: Path
    inputs: list[tuple[str, str]] = field(default_factory=list)   # name, fact
    outputs: list[tuple[str, str]] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    bytes_by_format: dict[str, int] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    # tensors tract holds in 8 bits (QU8/QI8) once loaded: name -> type
    quantized: dict[str, str] = field(default_factory=dict)
    # int8 weights with per-row scales, dequantized in the graph (w8_per_row): labels
    int8_weights: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"bundle {self.path}"]
        lines += [f"  input  {n}: {f}" for n, f in self.inputs]
        lines += [f"  output {n}: {f}" for n, f in self.outputs]
        lines.append("ops: " + ", ".join(f"{k} x{v}" for k, v in
                                         sorted(self.ops.items(), key=lambda kv: -kv[1])))
        total = sum(self.bytes_by_format.values())
        lines.append(f"tensor bytes: {total:,} (" + ", ".join(
            f"{k} {v:,}" for k, v in sorted(self.bytes_by_format.items())) + ")")
        if self.quantized:
            kinds = Counter(t.split("(")[0] for t in self.quantized.values())
            lines.append(f"8-bit in tract: {len(self.quantized)} tensors (" + ", ".join(
                f"{k} x{v}" for k, v in sorted(kinds.items())) + ")")
        if self.int8_weights:
            lines.append(f"int8 weights, float activations: {len(self.int8_weights)} tensors "
                         "(i8 levels, f32 row scales, dequantized in the graph)")
        if self.properties:
            lines.append("properties: " + ", ".join(f"{k}={v}" for k, v in self.properties.items()))
        return "\n".join(lines)


_FORMATS = {(0, 0, 16): "f16", (0, 0, 32): "f32", (0, 0, 64): "f64", (0, 5, 8): "bool"}


def _dat_format(head: bytes) -> str:
    bits = int.from_bytes(head[44:48], "little")
    item = int.from_bytes(head[48:50], "little")
    vendor = int.from_bytes(head[50:52], "little")
    if vendor == 0:
        if (vendor, item, bits) in _FORMATS:
            return _FORMATS[(vendor, item, bits)]
        return {1: "u", 2: "u", 3: "i", 4: "i"}.get(item, "?") + str(bits)
    if item == Q4_0_ITEM_TYPE:
        return "q4_0"
    if item == Q8_1_ITEM_TYPE:
        return "q8_1"
    return f"tract:{item:#x}"


def bundle_info(path) -> BundleInfo:
    path = _open(path)
    info = BundleInfo(path)
    model = _tract_model(path)
    for i in range(model.input_count()):
        info.inputs.append((model.input_name(i), str(model.input_fact(i))))
    for i in range(model.output_count()):
        info.outputs.append((model.output_name(i), str(model.output_fact(i))))
    for key in model.property_keys():
        shown = str(model.property(key))  # e.g. "Tensor(,String 0.23.9)"
        m = re.fullmatch(r"Tensor\(.*?,\s*\w+ (.*)\)", shown, flags=re.S)
        info.properties[key] = m.group(1) if m else shown
    if read_member(path, "graph.quant") is not None:
        info.quantized = tract_quantized_tensors(path)
    text = read_member(path, "graph.nnef").decode()
    body = text[text.index("graph "):]
    info.ops = dict(Counter(re.findall(r"=\s*([A-Za-z_]\w*)\s*[<(]", body)))
    info.ops.pop("tract_core_external", None)
    kinds = {label: kind for kind, label in
             re.findall(r'variable<(\w+)>\(label = "([^"]+)"', body)}
    info.int8_weights = [label for label, kind in kinds.items()
                         if kind == "integer" and kinds.get(f"{label}.scale") == "scalar"]
    info.ops.pop("variable", None)
    for name, size in _members(path).items():
        if name.endswith(".dat"):
            head = read_member(path, name)[:52] if path.is_dir() else None
            fmt = _dat_format(head) if head else "dat"
            info.bytes_by_format[fmt] = info.bytes_by_format.get(fmt, 0) + size
    if not path.is_dir():  # archives: one pass reading headers
        info.bytes_by_format.clear()
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.endswith(".dat"):
                    fmt = _dat_format(tar.extractfile(m).read(52))
                    info.bytes_by_format[fmt] = info.bytes_by_format.get(fmt, 0) + m.size
    return info


def tract_quantized_tensors(path) -> dict[str, str]:
    """The tensors of graph.quant as tract types them once the bundle is loaded: a copy of
    the bundle whose outputs are those tensors is loaded, and tract's output facts read
    (e.g. ``qu8(z:111 s:0.0236)``). Returns name -> fact type, upper-cased (``QU8(...)``)."""
    import tempfile
    path = _open(path)
    quant = read_member(path, "graph.quant")
    if quant is None:
        return {}
    names = re.findall(r'^\s*"([^"]+)"\s*:', quant.decode(), flags=re.M)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp, "bundle")
        if path.is_dir():
            copy.mkdir()
            for item in path.iterdir():
                (copy / item.name).symlink_to(item.resolve())
        else:
            with tarfile.open(path) as tar:
                tar.extractall(copy, filter="data")
        text = (copy / "graph.nnef").read_text()
        (copy / "graph.nnef").unlink()
        text = re.sub(r"(graph\s+\w+\s*\([^)]*\)\s*->\s*)\(([^)]*)\)",
                      lambda m: m.group(1) + "(" + ", ".join(names) + ")", text, count=1)
        (copy / "graph.nnef").write_text(text)
        loaded = verify.load_tract_model(copy)
        facts = {loaded.output_name(i): str(loaded.output_fact(i))
                 for i in range(loaded.output_count())}
    out = {}
    for name in names:
        fact = facts.get(name, "")
        m = re.search(r"(q[iu]\d+\(.*\))", fact, flags=re.I)
        if m:
            kind, rest = m.group(1).split("(", 1)
            out[name] = kind.upper() + "(" + rest
    return out


def check_bundle(path, tolerance: str | None = None, binary: str | None = None):
    """Rerun the stored example inputs (``--dump-io``) and compare with the stored outputs."""
    from t2n.pipeline import IO_FILE, META_FILE
    path = _open(path)
    raw_io, raw_meta = read_member(path, IO_FILE), read_member(path, META_FILE)
    if raw_io is None or raw_meta is None:
        raise LoadError(f"{path} holds no stored inputs/outputs",
                        "export it again with --dump-io")
    try:
        meta = json.loads(raw_meta)
        with np.load(io.BytesIO(raw_io), allow_pickle=False) as data:
            inputs = [data[n] for n in meta["inputs"]]
            outputs = [data[n] for n in meta["outputs"]]
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as e:
        raise LoadError(f"{path} has unreadable stored inputs/outputs ({IO_FILE}, {META_FILE}): "
                        f"{type(e).__name__}: {e}", "export it again with --dump-io") from e
    return verify.check(path, inputs, outputs, meta["outputs"],
                        tolerance or meta.get("tolerance", "approximate"), binary=binary,
                        steps=meta.get("output_steps"))


def ops_table(markdown: bool = False) -> str:
    """The registry by family: each op with torch's schema, and whether it has an 8-bit
    handler (it then runs on 8-bit values in 8-bit graphs; other ops read float copies)."""
    from t2n.translate import TRANSLATORS
    from t2n.translate.registry import EIGHT_BIT
    by_family: dict[str, list] = {}
    for t in TRANSLATORS.values():
        by_family.setdefault(t.family, []).append(t)
    lines = []
    if markdown:
        lines += ["# Supported ATen ops", "",
                  "Generated by `t2n ops --markdown` from the translator registry; "
                  "do not edit by hand. Schemas are torch's own; 8-bit: the op also runs on "
                  "8-bit values in 8-bit graphs (docs/int8.md), other ops read float copies "
                  "of them.", "",
                  f"{len(TRANSLATORS)} op overloads in {len(by_family)} families, "
                  f"{sum(t in EIGHT_BIT for t in TRANSLATORS)} with an 8-bit handler.", ""]
    for family in sorted(by_family):
        items = sorted(by_family[family], key=lambda t: t.name)
        if markdown:
            lines += [f"## {family}", "", "| op | schema | 8-bit |", "|---|---|---|"]
            lines += [f"| `{t.name}` | `{t.schema}` | {'yes' if t.target in EIGHT_BIT else ''} |"
                      for t in items]
            lines.append("")
        else:
            lines.append(f"{family} ({len(items)}): " + ", ".join(
                t.name + (" [8-bit]" if t.target in EIGHT_BIT else "") for t in items))
    return "\n".join(lines)

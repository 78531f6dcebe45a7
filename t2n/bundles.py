"""Read exported bundles back: `t2n info`, `t2n check`, and the supported-ops table."""
from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from t2n import verify
from t2n.errors import LoadError
from t2n.quant.q4_0 import ITEM_TYPE as Q4_0_ITEM_TYPE

__all__ = ["BundleInfo", "bundle_info", "check_bundle", "ops_table", "read_member"]


def _members(path: Path) -> dict[str, int]:
    if path.is_dir():
        return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}
    with tarfile.open(path) as tar:
        return {m.name.removeprefix("./"): m.size for m in tar.getmembers() if m.isfile()}


def read_member(path: Path, name: str) -> bytes | None:
    """A file of the bundle (directory or archive), or None."""
    if path.is_dir():
        p = path / name
        return p.read_bytes() if p.is_file() else None
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if m.name.removeprefix("./") == name:
                return tar.extractfile(m).read()
    return None


def _open(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise LoadError(f"bundle {path} does not exist", "give the path t2n export wrote")
    if path.is_file() and not tarfile.is_tarfile(path):
        raise LoadError(f"{path} is neither a bundle folder nor a .tar/.tgz",
                        "give the path t2n export wrote")
    if read_member(path, "graph.nnef") is None:
        raise LoadError(f"{path} has no graph.nnef", "give the path t2n export wrote")
    return path


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
    return f"tract:{item:#x}"


def bundle_info(path) -> BundleInfo:
    path = _open(path)
    info = BundleInfo(path)
    model = verify.load_tract_model(path)
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
    meta = json.loads(raw_meta)
    with np.load(io.BytesIO(raw_io), allow_pickle=False) as data:
        inputs = [data[n] for n in meta["inputs"]]
        outputs = [data[n] for n in meta["outputs"]]
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

"""`t2n info CHECKPOINT`: what a checkpoint holds, like `t2n info` for a bundle."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from t2n.checkpoint.store import WEIGHTS_NAME, read_map

__all__ = ["checkpoint_info"]

def _stored_bytes(entry: dict) -> int:
    n = 1
    for d in entry["shape"]:
        n *= int(d)
    if entry["storage"] == "q4_0":
        return n // 32 * 18
    if entry["storage"] == "int8":
        return n
    if entry["storage"] == "q8_1":
        return n // 32 * 36
    if entry["storage"] == "w8_per_row":
        return n + int(entry["shape"][0]) * 4
    return n * getattr(torch, entry.get("dtype", "float32")).itemsize


def checkpoint_info(path) -> str:
    """A summary: tensors and bytes by storage format, tied tensors, and how it was made."""
    path = Path(path)
    qmap = read_map(path)
    counts, nbytes = Counter(), Counter()
    tied = 0
    for entry in qmap.get("tensors", {}).values():
        if "tied_to" in entry:
            tied += 1
            continue
        counts[entry["storage"]] += 1
        nbytes[entry["storage"]] += _stored_bytes(entry)
    record = qmap.get("record", {})
    builder = qmap.get("builder", {})
    made = builder.get("class") or builder.get("path") or "?"
    lines = [f"checkpoint {path} ({made})",
             f"  file: {WEIGHTS_NAME} {(path / WEIGHTS_NAME).stat().st_size:,} bytes"]
    for storage in sorted(counts):
        lines.append(f"  {storage:6s} {counts[storage]:5d} tensor(s) {nbytes[storage]:>14,} bytes")
    if tied:
        lines.append(f"  tied   {tied:5d} tensor(s) stored once with another")
    cal = record.get("calibration") or {}
    lines.append(f"  method: {record.get('compression', 'unknown')}"
                 + (f" options {record['options']}" if record.get("options") else ""))
    if cal:
        lines.append(f"  calibration: {cal.get('source', '?')} (sha256 {str(cal.get('sha256'))[:12]})")
    if record.get("seconds") is not None:
        lines.append(f"  quantized in {record['seconds']:.1f} s by t2n {record.get('t2n_version')}"
                     + (f" from {record['source']}" if record.get("source") else ""))
    return "\n".join(lines)

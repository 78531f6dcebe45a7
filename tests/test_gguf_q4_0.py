"""GGUF Q4_0 tensors reach the bundle as they are: a Q4_0 GGUF of SmolLM2 (written with
llama.cpp's own Python package, gguf-py: its metadata copied, every quantized weight re-encoded
by its Q4_0 reference quantizer) exports to a bundle whose Q4_0 .dat files hold the GGUF's blocks."""
import tarfile

import numpy as np
import pytest

from helpers import SMOLLM2_GGUF, packaged_file
from test_calibrated_cli import t2n


def q4_0_copy(src, dst):
    """``src`` with every Q4_1 and Q8_0 tensor (the embedding) re-encoded as Q4_0 (gguf-py's
    reference quantizer, as llama.cpp's --pure Q4_0);
    returns ``{tensor name: raw Q4_0 bytes}``."""
    import gguf
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(dst), arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    blocks, datas = {}, []
    for t in reader.tensors:
        data, kind = t.data, t.tensor_type
        if kind in (gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0):
            values = gguf.quants.dequantize(t.data, kind)
            data = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q4_0)
            kind = gguf.GGMLQuantizationType.Q4_0
            blocks[t.name] = data.tobytes()
        writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, kind)
        datas.append(data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in datas:
        writer.write_tensor_data(data)
    writer.close()
    return blocks


@pytest.mark.slow
def test_a_q4_0_gguf_keeps_its_blocks_in_the_bundle(tmp_path):
    blocks = q4_0_copy(packaged_file(*SMOLLM2_GGUF), tmp_path / "smol-q4_0.gguf")
    proc = t2n(tmp_path, "-v", "export", "smol-q4_0.gguf", "out.tgz")
    assert proc.returncode == 0, proc.stderr
    assert "Q4_0 tensor(s) carried as they are" in proc.stderr
    assert "verified in tract" in proc.stdout
    with tarfile.open(tmp_path / "out.tgz") as tar:
        dats = {m.name: tar.extractfile(m).read() for m in tar.getmembers()
                if m.name.endswith(".dat")}
    # every Q4_0 payload of the bundle (after its 128-byte header) is made of GGUF blocks;
    # rows may be reordered (transformers permutes Llama's query/key rows), blocks never change
    gguf_blocks = {bytes(b) for raw in blocks.values()
                   for b in np.frombuffer(raw, np.uint8).reshape(-1, 18)}
    q4 = {n: d[128:] for n, d in dats.items() if len(d) > 128 and (len(d) - 128) % 18 == 0
          and d[128:] and "weight" in n and b"\x40\x30" in d[:128]}
    assert len(q4) >= 200, sorted(dats)[:5]
    for name, payload in q4.items():
        rows = np.frombuffer(payload, np.uint8).reshape(-1, 18)
        assert all(bytes(r) in gguf_blocks for r in rows[:: max(1, len(rows) // 64)]), name
    # the embedding (tied with the head) holds exactly the GGUF's token_embd blocks, in order
    table = blocks["token_embd.weight"]
    emb = [d for d in q4.values() if len(d) == len(table)]
    assert len(emb) == 1 and emb[0] == table

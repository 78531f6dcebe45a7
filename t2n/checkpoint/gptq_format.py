"""4-bit checkpoints in the GPTQ layout (what auto-gptq, GPTQModel and auto-round's
``auto_gptq`` export write), in auto-round's own format (``quant_method: auto-round``, whose
``packing_format`` names the layout) and in AutoAWQ's GEMM layout, read into Q4_0 weights.

A quantized Linear ``in -> out`` is stored as ``qweight`` int32 ``[in * bits / 32, out]`` (each
int32 holds ``32 / bits`` consecutive input rows, the first in the low bits), ``qzeros`` int32
``[groups, out * bits / 32]`` (consecutive output columns packed the same way), ``scales``
float16 ``[groups, out]``, ``g_idx`` int32 ``[in]`` (the group of each input row) and an
optional ``bias``. A weight decodes to ``scale[g, o] * (q[i, o] - z[g, o])``; the ``gptq``
checkpoint format stores ``z - 1``, ``gptq_v2`` stores ``z``. auto-round's own format uses
this layout with ``packing_format`` ``auto_round:auto_gptq`` (``z - 1``) or ``auto_round`` /
``auto_round:gptqmodel`` (``z``), and AWQ's with ``auto_round:auto_awq``. The AWQ layout packs
along output columns instead: ``qweight`` int32 ``[in, out * bits / 32]`` and ``qzeros``
``[groups, out * bits / 32]``, each int32 holding eight consecutive columns in the slot order
0, 4, 1, 5, 2, 6, 3, 7 (column j in nibble ``order[j]``), zero points stored as they are, no
``g_idx``.

Q4_0 keeps 32 consecutive inputs of one output row with one float16 scale and levels
``q - 8``: a 4-bit symmetric group (every zero point 8) whose size is a multiple of 32, rows in
their own order (``g_idx[i] == i // group_size``), is four (or more) equal 32-blocks of it, so
the conversion is exact. Anything else (other bit widths, asymmetric zero points, act-order
with a permuted ``g_idx``) is dequantized and quantized again to Q4_0 with GGML's rule, with a
log line saying so, or refused when ``lossless`` is asked for.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from t2n.errors import LoadError
from t2n.quant.q4_0 import BLOCK, Q4_0Tensor

__all__ = ["LAYOUTS", "gptq_config", "layout_of", "load_gptq", "pack_gptq", "unpack_gptq"]

log = logging.getLogger(__name__)

METHODS = ("gptq", "auto-round", "autoround", "awq")
_PARTS = ("qweight", "qzeros", "scales", "g_idx")
LAYOUTS = ("gptq", "gptq_v2", "awq")
# auto-round's packing formats -> layout (anything else is one of its other storage kinds)
_AUTO_ROUND = {"": "gptq", "auto": "gptq", "auto_round:auto_gptq": "gptq",
               "auto_round:gptq": "gptq", "auto_round": "gptq_v2",
               "auto_round:gptqmodel": "gptq_v2", "auto_round:auto_awq": "awq",
               "auto_round:awq": "awq"}
_AWQ_SLOT = [0, 4, 1, 5, 2, 6, 3, 7]    # the nibble holding column j of eight (4-bit AWQ)


def gptq_config(folder) -> dict | None:
    """The ``quantization_config`` of a Hugging Face folder in the GPTQ layout, or None."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    q = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(q, dict) and str(q.get("quant_method", "")).lower() in METHODS:
        return q
    return None


def layout_of(qc: dict, folder) -> str:
    """The packing layout (one of LAYOUTS) a ``quantization_config`` declares."""
    method = str(qc.get("quant_method", "")).lower()
    if method == "gptq":
        return "gptq_v2" if str(qc.get("checkpoint_format", "gptq")).lower() == "gptq_v2" \
            else "gptq"
    if method == "awq":
        version = str(qc.get("version", "gemm")).lower()
        if version != "gemm":
            raise LoadError(f"{folder}: AWQ checkpoints of version {version!r} are not read "
                            "(only 'gemm')", "export the model with AutoAWQ's GEMM version")
        return "awq"
    packing = str(qc.get("packing_format") or "").lower()
    if packing not in _AUTO_ROUND:
        raise LoadError(f"{folder}: auto-round's packing format {packing!r} is not read (only "
                        f"{', '.join(sorted(k for k in _AUTO_ROUND if k))})",
                        "export it from auto-round with format='auto_round' or 'auto_gptq'")
    return _AUTO_ROUND[packing]


def _unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 ``[r, c]`` holding ``32 / bits`` values per item along rows -> ``[r * 32/bits, c]``."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int64) * bits
    values = (packed.to(torch.int64)[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)
    return values.reshape(-1, packed.shape[1])


def _unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 ``[r, c]`` holding ``32 / bits`` values per item along columns -> ``[r, c * 32/bits]``."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int64) * bits
    values = (packed.to(torch.int64)[:, :, None] >> shifts[None, None, :]) & ((1 << bits) - 1)
    return values.reshape(packed.shape[0], -1)


def _pack_values(values: torch.Tensor, bits: int, axis: int) -> torch.Tensor:
    per = 32 // bits
    v = values.to(torch.int64)
    if axis == 0:
        v = v.reshape(-1, per, v.shape[1])
        out = sum(v[:, b, :] << (bits * b) for b in range(per))
    else:
        v = v.reshape(v.shape[0], -1, per)
        out = sum(v[:, :, b] << (bits * b) for b in range(per))
    return torch.from_numpy((out.numpy() & 0xFFFFFFFF).astype(np.uint32).view(np.int32))


def unpack_gptq(parts: dict, bits: int, layout: str = "gptq") -> tuple:
    """``(q [in, out], zeros [groups, out], scales [groups, out], g_idx [in] or None)`` as
    int64/float, from the stored tensors of one Linear in ``layout`` (see LAYOUTS)."""
    scales = parts["scales"].float()
    if layout == "awq":
        if bits != 4:
            raise LoadError(f"{bits}-bit AWQ weights are not read", "use a 4-bit checkpoint")

        def cols(packed):
            v = _unpack_cols(packed, bits)
            return v.reshape(v.shape[0], -1, 8)[:, :, _AWQ_SLOT].reshape(v.shape[0], -1)
        return cols(parts["qweight"]), cols(parts["qzeros"])[:, :scales.shape[1]], scales, None
    q = _unpack_rows(parts["qweight"], bits)
    zeros = _unpack_cols(parts["qzeros"], bits) + (0 if layout == "gptq_v2" else 1)
    g_idx = parts["g_idx"].to(torch.int64) if parts.get("g_idx") is not None else None
    return q, zeros[:, :scales.shape[1]], scales, g_idx


def pack_gptq(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor,
              g_idx: torch.Tensor | None, bits: int = 4, layout: str = "gptq") -> dict:
    """The stored tensors of levels ``q [in, out]`` in 0..2^bits-1, zero points ``[groups,
    out]``, scales ``[groups, out]`` and ``g_idx [in]`` in ``layout`` (the inverse of
    ``unpack_gptq``; tests and tools build checkpoints with it)."""
    if layout == "awq":
        slot_of = torch.tensor(_AWQ_SLOT)
        inverse = torch.empty_like(slot_of)
        inverse[slot_of] = torch.arange(8)

        def cols(v):
            return _pack_values(v.reshape(v.shape[0], -1, 8)[:, :, inverse].reshape(v.shape[0],
                                                                                   -1), bits, 1)
        return {"qweight": cols(q), "qzeros": cols(zeros), "scales": scales.to(torch.float16)}
    out = {"qweight": _pack_values(q, bits, 0),
           "qzeros": _pack_values(zeros - (0 if layout == "gptq_v2" else 1), bits, 1),
           "scales": scales.to(torch.float16)}
    if g_idx is not None:
        out["g_idx"] = g_idx.to(torch.int32)
    return out


def _to_q4_0(name: str, parts: dict, bits: int, layout: str, lossless: bool,
             dtype: torch.dtype) -> Q4_0Tensor:
    q, zeros, scales, g_idx = unpack_gptq(parts, bits, layout)
    k, n = q.shape
    groups = scales.shape[0]
    size = k // groups if groups else k
    in_order = g_idx is None or torch.equal(g_idx, torch.arange(k) // size)
    exact = bits == 4 and size % BLOCK == 0 and in_order and bool((zeros == 8).all())
    if exact:
        # block (o, b) covers inputs 32b..32b+31 of output o: group 32b // size
        d = scales[(torch.arange(k // BLOCK) * BLOCK) // size]          # [k/32, n]
        d = d.T.reshape(-1)                                              # row-major blocks
        levels = (q.T.reshape(n, k // BLOCK, BLOCK) - 8).reshape(-1, BLOCK)
        return Q4_0Tensor.from_blocks(d, levels, (n, k), dtype)
    why = ", ".join(w for w, bad in (
        (f"{bits}-bit", bits != 4), (f"groups of {size}", size % BLOCK != 0),
        ("act-order (g_idx permuted)", not in_order),
        ("asymmetric zero points", not bool((zeros == (1 << (bits - 1))).all()))) if bad)
    if lossless:
        raise LoadError(f"{name} cannot be carried into Q4_0 exactly ({why})",
                        "drop --lossless to requantize it from its dequantized weights")
    groups_of = g_idx if g_idx is not None else torch.arange(k) // size
    weight = (q - zeros[groups_of]).float() * scales[groups_of]        # [in, out]
    log.info("%s: %s, not Q4_0's layout: requantized to Q4_0 from its dequantized weights",
             name, why)
    return Q4_0Tensor.from_float(weight.T.contiguous().to(dtype))


def load_gptq(folder, *, dtype: str | None = None, lossless: bool = False):
    """``(model, tokenizer)`` of a GPTQ-layout Hugging Face folder, its quantized Linears as
    Q4_0 weights (exact where the layout allows, see the module docstring)."""
    import transformers
    from safetensors import safe_open
    folder = Path(folder)
    qc = gptq_config(folder) or {}
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    if bits not in (2, 3, 4, 8) or 32 % bits:
        raise LoadError(f"{folder}: {bits}-bit GPTQ weights are not packed 32/bits per int32",
                        "convert the checkpoint to 4 or 8 bits")
    layout = layout_of(qc, folder)
    want = torch.float16 if dtype == "f16" else torch.float32
    config = transformers.AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if hasattr(config, "use_cache"):
        config.use_cache = False
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise LoadError(f"{folder}: transformers has no class {arch!r}",
                        "check config.json's architectures")
    # built on the CPU (not the meta device): buffers that checkpoints leave out, such as
    # rotary frequencies, are computed as the model defines them
    model = cls._from_config(config, dtype=want)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LoadError(f"{folder} has no .safetensors weights", "give the checkpoint folder")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    modules = dict(model.named_modules())
    for prefix in sorted({k.rsplit(".", 1)[0] for k in tensors if k.endswith(".qweight")}):
        module = modules.get(prefix)
        if not isinstance(module, nn.Linear):
            raise LoadError(f"{folder}: quantized tensor {prefix}.qweight has no Linear in "
                            f"{arch}", "check that config.json matches the weights")
        parts = {p: tensors.pop(f"{prefix}.{p}", None) for p in _PARTS}
        if any(parts[p] is None for p in ("qweight", "qzeros", "scales")):
            raise LoadError(f"{folder}: {prefix} lacks qzeros or scales", "re-export it")
        weight = _to_q4_0(prefix, parts, bits, layout, lossless, want)
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise LoadError(f"{folder}: {prefix} holds a {list(weight.shape)} weight, "
                            f"{arch} expects {list(module.weight.shape)}",
                            "check that config.json matches the weights")
        module.weight = nn.Parameter(weight, requires_grad=False)
        bias = tensors.pop(f"{prefix}.bias", None)
        if bias is not None and module.bias is not None:
            module.bias = nn.Parameter(bias.to(want), requires_grad=False)
    state = {k: v.to(want) if v.is_floating_point() else v for k, v in tensors.items()}
    quantized = {f"{p}.weight" for p, m in modules.items()
                 if isinstance(getattr(m, "weight", None), Q4_0Tensor)}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or ()) \
        if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in quantized and k not in tied]
    if missing:
        raise LoadError(f"{folder} lacks {len(missing)} tensor(s) of {arch}, e.g. {missing[0]}",
                        "give the complete checkpoint")
    if unexpected:
        log.info("%s: %d stored tensor(s) not used by %s, e.g. %s", folder, len(unexpected),
                 arch, unexpected[0])
    model.tie_weights()
    model.eval()
    tokenizer = None
    if any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        except Exception as e:  # a model without a usable tokenizer still exports
            log.debug("no tokenizer for %s: %s", folder, e)
    return model, tokenizer

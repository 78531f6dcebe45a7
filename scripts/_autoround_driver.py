"""Driver for the auto-round baseline: runs INSIDE the auto-round virtual environment
(scripts/setup_quant_baselines.sh makes /work/autoround-venv), started by
scripts/_quant_baselines.py:autoround_q4_0 as one measured subprocess.

    /work/autoround-venv/bin/python scripts/_autoround_driver.py HF_DIR CALIB.txt OUT_DIR \
        REPORT.json [--iters 50] [--nsamples 32] [--seqlen 512] [--batch-size 8] [--seed 42]
        [--recipe] [--no-amp]

What it does
  1. Loads the plain float Hugging Face folder (model in float32 on the CPU, its tokenizer).
  2. Calibration data = the given text, tokenized with that tokenizer (no special tokens), cut
     into `nsamples` consecutive, non-overlapping windows of `seqlen` tokens from its start; each
     window is handed to auto-round as one pre-tokenized LongTensor [1, seqlen] inside a plain
     Python list (auto-round iterates a list/tuple dataset as given and feeds tensors straight to
     the model). auto-round's own dataset loader (which would fetch a hub dataset such as
     NeelNanda/pile-10k) is replaced by a function that raises, and the hub is set offline, so
     a run that does not use the given text fails instead of silently calibrating on something
     else. The report counts how many windows auto-round actually drew from the list.
  3. AutoRound (SignRound) with bits=4, group_size=32, sym=True, iters/nsamples/seqlen/
     batch_size/seed as given, device_map="cpu"; quantize_and_save(format="gguf:q4_0").
     Everything else is auto-round's default; note that its default amp=True casts the whole
     float32 model to bfloat16 on a CPU that supports it (this one does), so the tuning runs in
     bf16 and the GGUF is packed from bf16 weights (the Q4_0 scales stay float32 before their
     fp16 storage). --no-amp passes amp=False (float32 throughout; slower).
  4. Reads the written .gguf back with gguf-py and reports the type of every tensor.

Tied embedding / lm_head. SmolLM2 ties lm_head to embed_tokens, so the GGUF has one matrix,
token_embd.weight, used both for the lookup and for the logits. auto-round does not tune it
(quant_lm_head is off; embeddings are not part of the tuned blocks) and, like llama.cpp's default
recipe, its gguf:q4_0 export stores a tied token_embd (and any output.weight) as Q6_K. The other
baselines use `llama-quantize --pure`, where every 2-D tensor is Q4_0. By default this driver
makes auto-round's export pure the same way: the format table's "lm_head"/"embedding" entries for
gguf:q4_0 are set to gguf:q4_0 and its llama.cpp-recipe type selector returns the base type
(Q4_0) for every tensor of two or more dimensions (1-D norms stay F32), so token_embd is written
as Q4_0 by auto-round's own packer (round-to-nearest, d = signed max / -8: no tuning, as in the
llama.cpp rows where the imatrix has no entry for token_embd). --recipe keeps auto-round's
default (Q6_K token_embd). The report says which tensors ended up in which type.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# no hub access: a default (downloaded) dataset or model must fail, not hang
for _k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_k, "1")


class CountingList(list):
    """A list that counts the items handed out by iteration (auto-round does `for data in ...`)."""

    drawn = 0

    def __iter__(self):
        for item in super().__iter__():
            CountingList.drawn += 1
            yield item


def calibration_windows(tok, text: str, nsamples: int, seqlen: int):
    import torch
    ids = tok(text, add_special_tokens=False)["input_ids"]
    need = nsamples * seqlen
    if len(ids) < need:
        raise SystemExit(f"error: calibration text has {len(ids)} tokens, {need} needed "
                         f"({nsamples} x {seqlen})")
    t = torch.tensor(ids[:need], dtype=torch.long).reshape(nsamples, seqlen)
    return CountingList(t[i:i + 1].clone() for i in range(nsamples)), len(ids)


def forbid_downloaded_datasets() -> None:
    """auto-round's loader for named datasets raises: only the given windows may be used."""
    import auto_round.calib_dataset as cd

    def refuse(*args, **kwargs):
        raise RuntimeError("auto-round asked for a named/downloaded calibration dataset; "
                           "this driver only allows the given text windows")
    cd.get_dataloader = refuse


def make_export_pure(fmt: str) -> list:
    """Every tensor of >= 2 dimensions in the base type of `fmt` (llama-quantize --pure); returns
    what was changed."""
    import auto_round.export.export_to_gguf.config as gcfg
    import auto_round.export.export_to_gguf.gguf_dtype as gdt
    import gguf

    changed = []
    for table in (gcfg.GGUF_CONFIG, gcfg.GGUF_INNER_CONFIG):
        entry = table.get(fmt)
        if entry is None:
            continue
        for key in ("lm_head", "embedding"):
            if entry.get(key) not in (None, fmt):
                changed.append(f"{fmt}[{key}]: {entry[key]} -> {fmt}")
                entry[key] = fmt

    def pure_select_qtype(self, name, n_dims, fallback_index=0):
        if n_dims < 2:
            return gguf.GGMLQuantizationType.F32
        return gdt._default_qtype(self.ftype)

    gdt.GGUFDTypeSelector.select_qtype = pure_select_qtype
    changed.append("GGUFDTypeSelector.select_qtype: base type for every >= 2-D tensor")
    return changed


def tensor_types(path: Path) -> dict:
    import gguf
    r = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, [int(x) for x in t.shape]) for t in r.tensors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("hf_dir", type=Path)
    ap.add_argument("calib_text", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("report", type=Path)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--format", default="gguf:q4_0")
    ap.add_argument("--no-amp", action="store_true",
                    help="amp=False: tune in float32 instead of auto-round's bf16 default")
    ap.add_argument("--recipe", action="store_true",
                    help="keep auto-round's llama.cpp-like recipe (tied token_embd as Q6_K) "
                         "instead of a pure export")
    args = ap.parse_args()

    t0 = time.perf_counter()
    marks = {}
    from importlib.metadata import version

    import auto_round
    import torch
    import transformers
    from auto_round import AutoRound

    forbid_downloaded_datasets()
    patches = [] if args.recipe else make_export_pure(args.format)

    tok = transformers.AutoTokenizer.from_pretrained(args.hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.hf_dir,
                                                              dtype=torch.float32).eval()
    text = args.calib_text.read_text()
    windows, n_text_tokens = calibration_windows(tok, text, args.nsamples, args.seqlen)
    marks["load_s"] = time.perf_counter() - t0

    ar = AutoRound(model, tokenizer=tok, bits=4, group_size=32, sym=True,
                   iters=args.iters, nsamples=args.nsamples, seqlen=args.seqlen,
                   batch_size=args.batch_size, seed=args.seed, dataset=windows,
                   device_map="cpu", **({"amp": False} if args.no_amp else {}))
    t1 = time.perf_counter()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    ar.quantize_and_save(str(args.out_dir), format=args.format)
    marks["quantize_and_save_s"] = time.perf_counter() - t1
    ggufs = sorted(args.out_dir.rglob("*.gguf"))
    if not ggufs:
        raise SystemExit(f"error: no .gguf written under {args.out_dir}")
    gguf_path = max(ggufs, key=lambda p: p.stat().st_size)
    types = tensor_types(gguf_path)
    counts: dict = {}
    for tt, shape in types.values():
        key = f"{tt} ({'2-D+' if len(shape) >= 2 else '1-D'})"
        counts[key] = counts.get(key, 0) + 1
    not_q4_0 = {n: tt for n, (tt, shape) in types.items() if len(shape) >= 2 and tt != "Q4_0"}
    report = {
        "gguf": str(gguf_path),
        "ggufs": [str(p) for p in ggufs],
        "versions": {n: version(n) for n in ("auto-round", "torch", "transformers", "gguf")},
        "auto_round_file": auto_round.__file__,
        "settings": {"bits": 4, "group_size": 32, "sym": True, "iters": args.iters,
                     "nsamples": args.nsamples, "seqlen": args.seqlen,
                     "batch_size": args.batch_size, "seed": args.seed, "format": args.format,
                     "device_map": "cpu", "pure": not args.recipe,
                     "amp": not args.no_amp, "model_dtype_after": str(model.dtype),
                     "torch_threads": torch.get_num_threads()},
        "calibration": {"text": str(args.calib_text), "text_chars": len(text),
                        "text_tokens": n_text_tokens, "windows": len(windows),
                        "window_tokens": args.seqlen,
                        "windows_drawn_by_auto_round": CountingList.drawn,
                        "form": "list of pre-tokenized LongTensor [1, seqlen], consecutive "
                                "windows from the start of the text"},
        "tied_word_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
        "export_patches": patches,
        "tensor_type_counts": counts,
        "tensors_not_q4_0": not_q4_0,
        "token_embd": types.get("token_embd.weight", [None])[0],
        "output": types.get("output.weight", [None])[0],
        "seconds": {**marks, "total_s": time.perf_counter() - t0},
    }
    args.report.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("gguf", "tensor_type_counts", "token_embd",
                                             "seconds")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export one model with torch-to-nnef 0.24.12. scripts/bench_export.py runs this with the BASELINE
python (a separate virtual environment, see scripts/setup_baseline.sh), one fresh process per export:

    python _baseline_export.py FOLDER OUT.nnef.tgz INPUTS.npz --kind bert|causal-lm \
        --tract-standin PATH [--dynamic NAME:AXIS=SYM ...] [--compression-level N]
        [--attn eager|sdpa] [--bool-mask] [--no-reify-sdpa]

The model is loaded the way ``t2n export`` loads a Hugging Face folder (config.use_cache off, float32,
class from config.architectures) and wrapped so that its outputs are t2n's:
BertModel -> (last_hidden_state, pooler_output), LlamaForCausalLM -> logits. The inputs are the
tensors t2n traces with, from an .npz written by the benchmark, in the .npz order.

Masks: transformers 5 builds BOOLEAN attention masks. torch-to-nnef's reified SDPA
(tract_transformers_sdpa, its default for tract > 0.22) passes them on and tract 0.23.9 refuses to
load the bundle ("Mask must be floating point"); its non-reified SDPA fragment casts the bool mask
to f32 and ADDS it (wrong as soon as a token is padded); and for a decoder without an
attention_mask transformers traces its packed-sequence detection, a bool cumsum tract cannot run.
So the wrapper hands the model a precomputed additive float mask (and position ids for the
decoder), the way torch_to_nnef_llm's own handlers do (models/handlers/base.py
build_causal_mask_with_past). ``--bool-mask`` turns that off to reproduce the failures.

torch-to-nnef's TractNNEF target insists on a tract CLI binary (not installable here): it gets a
stand-in printing ``tract 0.23.9`` and check_io=False; the benchmark checks the bundle itself with
the tract bindings.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from torch_to_nnef import TractNNEF, export_model_to_nnef

OUTPUTS = {"bert": ["last_hidden_state", "pooler_output"], "causal-lm": ["logits"]}
NEG = torch.finfo(torch.float32).min


def _padding_mask(attention_mask):
    """[B, S] 0/1 mask -> additive float mask [B, 1, S, S] (0 kept, float32 min masked). Full
    query axis: torch-to-nnef's reified SDPA tiles a [B, 1, 1, S] mask over the query axis with
    the example's S baked in, which breaks the dynamic axis."""
    seq = attention_mask.shape[1]
    pad = ((1 - attention_mask.to(torch.float32)) * NEG)[:, None, None, :]
    return pad + torch.zeros([seq, 1])


def _causal_mask(input_ids):
    """Additive float causal mask [1, 1, S, S] and position ids, for any S at runtime."""
    seq = input_ids.shape[1]
    pos = torch.arange(seq)
    future = (pos.unsqueeze(0) > pos.unsqueeze(1)).to(torch.float32)  # 1.0 where masked
    mask = (torch.full([seq, seq], NEG) * future)[None, None]
    return {"attention_mask": mask, "position_ids": pos.unsqueeze(0)}


class Wrap(torch.nn.Module):
    """Positional tensor inputs in, the named output fields out (tensors only)."""

    def __init__(self, model, kind, input_names, float_mask):
        super().__init__()
        self.model = model
        self.kind = kind
        self.input_names = list(input_names)
        self.float_mask = float_mask

    def forward(self, *args):
        kwargs = dict(zip(self.input_names, args))
        if self.kind == "causal-lm":
            kwargs["use_cache"] = False
            if self.float_mask:
                kwargs.update(_causal_mask(kwargs["input_ids"]))
        elif self.float_mask and "attention_mask" in kwargs:
            kwargs["attention_mask"] = _padding_mask(kwargs["attention_mask"])
        out = self.model(**kwargs)
        vals = tuple(getattr(out, k) for k in OUTPUTS[self.kind])
        return vals[0] if len(vals) == 1 else vals


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("out", type=Path, help="destination, ending in .nnef.tgz")
    ap.add_argument("inputs", type=Path, help=".npz of the example inputs, in forward order")
    ap.add_argument("--kind", choices=sorted(OUTPUTS), required=True)
    ap.add_argument("--tract-standin", type=Path, required=True,
                    help="executable printing 'tract 0.23.9' for --version")
    ap.add_argument("--tract-version", default="0.23.9")
    ap.add_argument("--dynamic", action="append", default=[], metavar="NAME:AXIS=SYM")
    ap.add_argument("--attn", choices=["eager", "sdpa"], default=None,
                    help="transformers attn_implementation (default: transformers' choice)")
    ap.add_argument("--bool-mask", action="store_true",
                    help="let transformers build its own (boolean) masks")
    ap.add_argument("--compression-level", type=int, default=0,
                    help="gzip level of the .nnef.tgz (0 stores, as t2n's default .tgz)")
    ap.add_argument("--no-reify-sdpa", action="store_true",
                    help="TractNNEF(reify_sdpa_operator=False): SDPA as an NNEF fragment")
    a = ap.parse_args()

    config = transformers.AutoConfig.from_pretrained(a.folder)
    if hasattr(config, "use_cache"):
        config.use_cache = False
    cls = getattr(transformers, config.architectures[0])
    extra = {"attn_implementation": a.attn} if a.attn else {}
    model = cls.from_pretrained(a.folder, config=config, dtype=torch.float32, **extra).eval()

    with np.load(a.inputs, allow_pickle=False) as data:
        names = list(data.files)
        args = tuple(torch.from_numpy(np.array(data[k])) for k in names)

    dynamic_axes: dict = {}
    for spec in a.dynamic:
        name, _, rest = spec.partition(":")
        axis, _, sym = rest.partition("=")
        dynamic_axes.setdefault(name, {})[int(axis)] = sym

    target_opts = {"reify_sdpa_operator": False} if a.no_reify_sdpa else {}
    out = export_model_to_nnef(
        model=Wrap(model, a.kind, names, float_mask=not a.bool_mask),
        args=args,
        file_path_export=a.out,
        inference_target=TractNNEF(
            version=a.tract_version,
            check_io=False,
            specific_tract_binary_path=a.tract_standin,
            dynamic_axes=dynamic_axes,
            **target_opts,
        ),
        input_names=names,
        output_names=OUTPUTS[a.kind],
        compression_level=a.compression_level,
        log_level=40,  # logging.ERROR
    )
    print(f"torch-to-nnef wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

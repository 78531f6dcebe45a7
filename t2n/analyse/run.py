"""The analyser: per-unit loss estimates for every method of a bag, exact choices under a sweep
of budgets, and the real loss of every configuration chosen.

    analyser = Analyser(model, Bag("gptq_q4_0_all", "imatrix_q4_0_all"),
                        calibration_data="notes.txt", task="causal-lm", tokenizer=tok)
    results = analyser.run(num_configs=8, constraint_type="size")
    results.save("analysis/")          # configs/*.json, results.json, table.md, pareto.png,
                                       # report.html
    results[budget].apply(model)

Data: the calibration source gives the methods their calibration (as an export would) and the
analyser its own batches: for a causal LM, 2 x ``samples`` windows of ``seqlen`` tokens, the
even ones for the estimates and the odd ones for the real losses (disjoint), unless
``validation_data`` is given. ``analysis_data`` measures the estimates and real losses on other
data than the methods calibrate on; ``"sampled"`` there is text sampled from the model itself
(a causal LM): the loss is then the expected KL over the model's own distribution, not over
one domain's text.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from t2n.analyse.bag import Bag, run_methods
from t2n.analyse.blocks import count_macs, find_units, module_bytes, weight_bits
from t2n.analyse.config import FLOAT, MixedConfig
from t2n.analyse.parallel import broadcast, is_main, shard, world_size
from t2n.analyse.estimate import (TASKS, grad_estimates, measure_loss, prepare,
                                  reference_outputs, value_estimates)
from t2n.analyse.solve import Problem, budgets, solve
from t2n.errors import OptionError

__all__ = ["Analyser", "Result", "Results", "CONSTRAINTS", "ESTIMATORS"]

log = logging.getLogger("t2n.analyse")

CONSTRAINTS = ("size", "macs", "latency")
ESTIMATORS = ("value", "grad")
FLOAT_BITS = {"f32": 32, "f16": 16}
SAMPLED = "sampled"      # analysis_data: text sampled from the model
LATENCY_TRIES = 3        # solves per latency budget when the measured time is over it


@dataclass
class Result:
    """One budget's configuration and its figures."""
    budget: float
    config: MixedConfig
    objective: float
    real_loss: float | None
    cost: float
    size_bytes: int
    macs: float
    latency_s: float | None = None       # measured end to end in tract (deployed shape)
    artifacts: dict = field(default_factory=lambda: {"text": {}, "benchmarks": {},
                                                     "images": {}})
    _cache: dict | None = field(default=None, repr=False)

    def apply(self, model: nn.Module, **kwargs) -> nn.Module:
        return self.config.apply(model, cache=self._cache, **kwargs)

    def remove(self, model: nn.Module) -> nn.Module:
        return self.config.remove(model)

    def save(self, path) -> Path:
        return self.config.save(path)

    @staticmethod
    def load(path) -> MixedConfig:
        return MixedConfig.load(path)

    def register_text(self, name: str, text: str) -> None:
        """A text shown with this configuration in the report (e.g. generated samples)."""
        self.artifacts["text"][str(name)] = str(text)

    def register_benchmarks(self, name: str, figures: dict) -> None:
        """Figures ({metric: value}) shown with this configuration in the report."""
        self.artifacts["benchmarks"][str(name)] = {str(k): v for k, v in figures.items()}

    def register_image(self, name: str, path) -> None:
        """A PNG/JPEG/SVG file, embedded in the report."""
        path = Path(path)
        if not path.is_file():
            raise OptionError(f"image {path} does not exist", "register an existing file")
        self.artifacts["images"][str(name)] = path

    def row(self) -> dict:
        return {"budget": self.budget, "cost": self.cost, "estimate": self.objective,
                "real_loss": self.real_loss, "bytes": self.size_bytes, "macs": self.macs,
                "latency_ms": None if self.latency_s is None else self.latency_s * 1e3,
                "choices": self.config.counts()}


class Results(dict):
    """{budget: Result}, plus the run's context: ``uniform`` ({label: row} of the configurations
    with one method everywhere it applies), ``spearman`` (rank correlation of estimated against
    real loss over the budgets), ``worse_than_uniform`` and ``meta``."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.uniform: dict = {}
        self.spearman: float | None = None
        self.worse_than_uniform: list = []
        self.meta: dict = {}
        self.units: list = []

    def save(self, folder) -> Path:
        from t2n.analyse.report import write_results
        return write_results(self, Path(folder))


def _default_task(model) -> str:
    from t2n.calibrate.data import is_causal_lm
    return "causal-lm" if is_causal_lm(model) else "classification"


class Analyser:
    """Mixed precision for ``model`` over ``bag`` (see the module docstring).

    ``task``: classification, regression, causal-lm or embedding (the loss: KL, MSE, KL, cosine
    distance); ``loss``: a callable ``(reference, output) -> scalar`` or its dotted path, in
    place of the task's. ``float_dtype``: the float type of the bundle (f32 or f16: the size of
    a float block). ``args``/``kwargs``: example inputs (models that are not causal LMs)."""

    def __init__(self, model: nn.Module, bag, block_names=None, calibration_data=None,
                 validation_data=None, task: str | None = None, loss=None, *, tokenizer=None,
                 samples: int = 8, seqlen: int = 256, seed: int = 0, device: str = "cpu",
                 float_dtype: str = "f32", args=(), kwargs=None, progress: bool = False,
                 analysis_data=None):
        self.model = model.eval()
        self.bag = bag if isinstance(bag, Bag) else Bag(*([bag] if isinstance(bag, str)
                                                          else bag))
        self.bag.check()
        self.task = task or _default_task(model)
        if self.task not in TASKS:
            raise OptionError(f"unknown task {self.task!r}", f"use one of: {', '.join(TASKS)}")
        self.loss = _resolve_loss(loss) if loss is not None else TASKS[self.task]
        if float_dtype not in FLOAT_BITS:
            raise OptionError(f"unknown float type {float_dtype!r}", "use f32 or f16")
        self.float_dtype = float_dtype
        self.units = find_units(model, block_names)
        from t2n.calibrate.device import check_device
        check_device(device)
        self.tokenizer, self.seed, self.device = tokenizer, seed, device
        self.calibration_data, self.validation_data = calibration_data, validation_data
        if analysis_data == SAMPLED and not self.lm:
            raise OptionError("analysis data 'sampled' is text sampled from a causal LM",
                              "give --analysis-data FILE for this model")
        self.analysis_data = analysis_data
        self.samples, self.seqlen = samples, seqlen
        self.args, self.kwargs = tuple(args or ()), dict(kwargs or {})
        self.progress = progress
        self._choices: dict | None = None
        self._estimates: dict = {}
        self._batches: tuple | None = None
        self._latency: tuple | None = None   # (choice seconds, rest, whole model, fit)
        self._macs_by_unit: dict | None = None
        self.timings: dict = {}

    @classmethod
    def for_llm(cls, model: str, bag, calibration_data=None, **kwargs) -> Analyser:
        """An analyser of the causal LM at ``model`` (a hub id in the local cache, a Hugging
        Face folder or a .gguf file), loaded in float with its tokenizer; ``calibration_data``:
        text (a file, a folder of .txt files, hf:DATASET) or None (text sampled from the model).
        """
        from t2n.load import load_model
        loaded = load_model(str(model), need_inputs=False)
        if loaded.quantized:
            raise OptionError(f"{model} is already quantized ({loaded.quantized})",
                              "analyse the float model")
        return cls(loaded.module, bag, calibration_data=calibration_data, task="causal-lm",
                   tokenizer=loaded.tokenizer, **kwargs)

    # -- data ----------------------------------------------------------------------------------
    @property
    def lm(self) -> bool:
        return self.task == "causal-lm"

    def _calibration(self, data, samples=None, seqlen=None, seed=None):
        from t2n.calibrate.data import calibration_for
        return calibration_for(data, model=self.model, tokenizer=self.tokenizer,
                               args=self.args, kwargs=self.kwargs, lm=self.lm,
                               samples=samples, seqlen=seqlen,
                               seed=self.seed if seed is None else seed, device=self.device)

    def _analysis_source(self):
        """The data of the estimates: ``analysis_data`` (None for "sampled": the data-free
        source), else the calibration data."""
        if self.analysis_data is None:
            return self.calibration_data
        return None if self.analysis_data == SAMPLED else self.analysis_data

    def batches(self) -> tuple[list, list]:
        """(estimate batches, validation batches)."""
        if self._batches is None:
            source = self._analysis_source()
            if self.validation_data is not None:
                est = self._calibration(source, self.samples, self.seqlen)
                val = self._calibration(self.validation_data, self.samples, self.seqlen,
                                        seed=self.seed + 1)
                est_b, val_b = _grouped(est), _grouped(val)
            else:
                both = self._calibration(source, 2 * self.samples, self.seqlen)
                both.load()
                if both.token_ids is not None and len(both.token_ids) >= 2:
                    est_b = _grouped_ids(both, both.token_ids[0::2])
                    val_b = _grouped_ids(both, both.token_ids[1::2])
                else:
                    items = both.samples
                    if len(items) < 2:
                        raise OptionError("the analyser needs at least 2 calibration samples "
                                          "(half estimate, half validate)",
                                          "give more calibration data")
                    est_b, val_b = items[0::2], items[1::2]
            # data-parallel (torchrun): this process's share of both
            self._batches = (shard(est_b), shard(val_b))
            if not self._batches[0] or not self._batches[1]:
                raise OptionError(f"{world_size()} processes for {len(est_b)} analysis "
                                  f"batch(es) and {len(val_b)} validation batch(es)",
                                  "give more samples, or start fewer processes")
        return self._batches

    # -- stages --------------------------------------------------------------------------------
    def choices(self) -> dict:
        """{method label: {unit: [modules]}} (each method run once)."""
        if self._choices is None:
            t0 = time.perf_counter()
            bar = _bar(len(self.bag), "methods", self.progress)
            self._choices = run_methods(
                self.model, self.bag, self.units, tokenizer=self.tokenizer, progress=bar,
                make_calibration=lambda m: self._calibration(self.calibration_data))
            _close(bar)
            self.timings["methods_s"] = time.perf_counter() - t0
        return self._choices

    @contextlib.contextmanager
    def _placed(self):
        """The model and the methods' modules on ``device`` for the estimates and losses
        (a CUDA device: torch runs them there); back on the CPU afterwards, for export."""
        if str(self.device) == "cpu":
            yield
            return
        from t2n.calibrate.device import check_device
        check_device(self.device)
        modules = [m for by_unit in self.choices().values() for mods in by_unit.values()
                   for m in mods]
        self.model.to(self.device)
        for m in modules:
            m.to(self.device)
        try:
            yield
        finally:
            self.model.to("cpu")
            for m in modules:
                m.to("cpu")

    def estimates(self, estimator: str = "value") -> dict:
        if estimator not in ESTIMATORS:
            raise OptionError(f"unknown loss estimator {estimator!r}",
                              f"use one of: {', '.join(ESTIMATORS)}")
        if estimator not in self._estimates:
            choices = self.choices()
            est_b, _ = self.batches()
            total = sum(len(v) for v in choices.values())
            bar = _bar(total, f"{estimator} estimates", self.progress)
            t0 = time.perf_counter()
            with self._placed():
                if estimator == "value":
                    out = value_estimates(self.model, self.units, choices, est_b,
                                          self.loss, progress=bar)
                else:
                    out = grad_estimates(self.model, self.units, choices, est_b, self.loss,
                                         seed=self.seed, progress=bar)
            _close(bar)
            self.timings[f"{estimator}_s"] = time.perf_counter() - t0
            self._estimates[estimator] = out
        return self._estimates[estimator]

    def problem(self, constraint_type: str, estimator: str) -> Problem:
        if constraint_type not in CONSTRAINTS:
            raise OptionError(f"unknown constraint type {constraint_type!r}",
                              f"use one of: {', '.join(CONSTRAINTS)}")
        estimates = self.estimates(estimator)
        choices = self.choices()
        float_bytes = FLOAT_BITS[self.float_dtype] // 8
        names = [u.name for u in self.units]
        options = {u.name: [FLOAT] + [label for label in choices if u.name in choices[label]]
                   for u in self.units}
        est = {(u, FLOAT): 0.0 for u in names}
        est.update({k: max(0.0, v) for k, v in estimates.items()})
        cost = {}
        if constraint_type == "size":
            cost = self._unit_bytes()
            fixed = self._fixed_bytes(float_bytes)
        elif constraint_type == "latency":
            lat, fixed = self._latencies()
            for u in self.units:
                for label in options[u.name]:
                    cost[(u.name, label)] = lat.get((u.name, label), 0.0)
        else:
            macs = self._macs()
            bits = FLOAT_BITS[self.float_dtype]
            for u in self.units:
                cost[(u.name, FLOAT)] = float(macs[u.name])
                for label in options[u.name][1:]:
                    cost[(u.name, label)] = macs[u.name] * weight_bits(
                        choices[label][u.name], bits) / bits
            fixed = 0.0
        return Problem(names, options, est, cost, fixed)

    def _unit_bytes(self) -> dict:
        """{(unit, label): bytes of the unit's weights with that choice}, "float" included."""
        float_bytes = FLOAT_BITS[self.float_dtype] // 8
        out = {}
        for u in self.units:
            out[(u.name, FLOAT)] = module_bytes(u.modules, float_bytes)
            for label, by_unit in self.choices().items():
                if u.name in by_unit:
                    out[(u.name, label)] = module_bytes(by_unit[u.name], float_bytes)
        return out

    def _fixed_bytes(self, float_bytes: int) -> int:
        inside = {id(p) for u in self.units for m in u.modules for p in m.parameters()}
        from t2n.analyse.blocks import tensor_bytes
        seen, total = set(), 0
        for p in self.model.parameters():
            if id(p) in inside or id(p) in seen:
                continue
            seen.add(id(p))
            total += tensor_bytes(p, float_bytes)
        return total

    def deploy_sample(self):
        """The input of one deployed run: one token for a causal LM, else a batch of one."""
        args, kwargs = self.batches()[0][0]
        if self.lm:
            ids = kwargs["input_ids"][:1, -1:]
            return (), {"input_ids": ids}
        def one(t):
            return t[:1] if isinstance(t, torch.Tensor) and t.dim() >= 1 else t
        return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}

    def _latencies(self) -> tuple[dict, float]:
        """({(unit, label): seconds}, the seconds outside the units), measured in tract."""
        if self._latency is None and world_size() > 1:
            # one process measures, so that every process solves the same problem
            self._latency = broadcast(self._measure_latencies() if is_main() else None)
        if self._latency is None:
            self._latency = self._measure_latencies()
        lat, fixed = self._latency[:2]
        return lat, fixed

    @property
    def latency_fit(self) -> dict:
        """How the latency estimate was fitted: the rest of the model timed with stand-ins,
        the fixed term, how many prices were read inside the model and their scales, the
        factors of the blocks timed alone, and the configurations measured end to end for it
        with their estimated and measured seconds."""
        self._latencies()
        return self._latency[3]

    @property
    def whole_model_seconds(self) -> float:
        """The float model's time in tract at the deployed shape (measured once)."""
        self._latencies()
        return self._latency[2]

    def _measure_latencies(self) -> tuple:
        """({(unit, label): seconds}, the fixed seconds (the float model beyond its blocks),
        the whole float model, the fit): a choice's seconds are its blocks' times inside the
        uniform configuration of its storage format, read from tract's profile of it; a block
        not found there counts its time alone times its storage format's factor (see
        t2n.analyse.latency)."""
        from t2n.analyse.latency import (LOADS, block_latencies, deploy_inputs, format_scales,
                                         in_model_times, matmul_counts, without_blocks)
        t0 = time.perf_counter()
        inputs = deploy_inputs(self.model, self.units, self.deploy_sample(), self.lm)
        choices = self.choices()
        total = len(self.units) + sum(len(v) for v in choices.values())
        bar = _bar(total, "tract latencies", self.progress)
        each: dict = {}
        alone = block_latencies(self.units, choices, inputs, progress=bar,
                                dtype=self.float_dtype, per_block=each)
        _close(bar)
        rest = self._end_to_end_seconds(without_blocks(self.model, self.units, inputs),
                                        loads=LOADS)
        profiles: dict = {FLOAT: []}
        whole = self._end_to_end_seconds(self.model, loads=LOADS, nodes=profiles[FLOAT])
        measured = [(FLOAT, {u.name: FLOAT for u in self.units}, whole)]
        same_as: dict = {}        # label -> the label measured for its storage format
        formats: dict = {}
        for label in choices:
            # labels whose blocks time the same on the same units store them the same way
            times = tuple((u.name, alone[(u.name, label)]) for u in self.units
                          if (u.name, label) in alone)
            if not times:
                continue
            if times in formats:
                same_as[label] = formats[times]
                continue
            formats[times] = same_as[label] = label
            choice = {u.name: (label if (u.name, label) in alone else FLOAT)
                      for u in self.units}
            profiles[label] = []
            measured.append((label, choice, self._measured_latency(
                choice, loads=LOADS, nodes=profiles[label])))
        scales = format_scales(alone, rest, measured)
        counts = matmul_counts(self.model, self.units, inputs)
        owner = {b: u.name for u in self.units for b in u.blocks}
        inside = {}        # (block, measured label) -> seconds inside that uniform configuration
        for label, choice, _ in measured:
            formats_of: dict = {}
            for b, n in counts.items():
                formats_of.setdefault(n, set()).add(choice[owner[b]])
            # a count shared by blocks of two storage formats cannot tell them apart
            seen = in_model_times(profiles[label], {b: n for b, n in counts.items()
                                                    if len(formats_of[n]) == 1})
            inside.update({(b, label): t for b, t in seen.items()
                           if choice[owner[b]] == label})
        # each choice: the part read from the profiles, the part its blocks alone x factor
        found, other, read = {}, {}, 0
        blocks_of = {u.name: u.blocks for u in self.units}
        for (u, c), v in alone.items():
            fmt = same_as.get(c, c)
            if any((b, fmt) in inside for b in blocks_of[u]):
                read += 1
                found[(u, c)] = sum(inside[(b, fmt)] for b in blocks_of[u] if (b, fmt) in inside)
                other[(u, c)] = sum(scales[fmt] * each[(b, c)] for b in blocks_of[u]
                                    if (b, fmt) not in inside)
            else:
                found[(u, c)], other[(u, c)] = 0.0, scales[fmt] * v
        # what the float model measures beyond its blocks: the estimate of the uniform float
        # configuration is its own measurement
        fixed = max(0.0, whole - sum(found.get((u.name, FLOAT), 0.0)
                                     + other.get((u.name, FLOAT), 0.0) for u in self.units))
        # a storage format may add nodes beside its blocks' matmuls (8-bit activations are
        # quantized): the parts read for it are scaled so that its uniform configuration's
        # estimate is its measurement too
        corr = {FLOAT: 1.0}
        for label, choice, seconds in measured[1:]:
            mine = sum(found.get(k, 0.0) for k in choice.items() if k[1] == label)
            rest_of = fixed + sum(other.get(k, 0.0) + (found.get(k, 0.0) if k[1] != label
                                                       else 0.0) for k in choice.items())
            corr[label] = max(0.0, seconds - rest_of) / mine if mine > 0 else 1.0
        cost = {(u, c): found[(u, c)] * corr[same_as.get(c, c)] + other[(u, c)]
                for (u, c) in alone}
        fit = {"rest_s": rest, "fixed_s": fixed, "in_model": read, "choices": len(cost),
               "scales": {c: scales[same_as.get(c, c)] for c in [FLOAT, *same_as]},
               "in_model_scales": {c: corr[same_as.get(c, c)] for c in [FLOAT, *same_as]},
               "configurations": [
                   {"uniform": label, "choice": choice, "measured_s": seconds,
                    "estimated_s": fixed + sum(cost.get(k, 0.0) for k in choice.items())}
                   for label, choice, seconds in measured]}
        log.info("analyse: latency: rest of the model %.3f ms (stand-ins), %.3f ms (the float "
                 "profile beyond its blocks); %d of %d choices timed inside the model (x %s); "
                 "the others alone x %s", rest * 1e3, fixed * 1e3, read, len(cost),
                 ", ".join(f"{c} {v:.2f}" for c, v in fit["in_model_scales"].items()),
                 ", ".join(f"{c} {v:.2f}" for c, v in fit["scales"].items()))
        self.timings["latency_s"] = time.perf_counter() - t0
        return cost, fixed, whole, fit

    def measured_latency(self, choice: dict) -> float:
        """A configuration's time in tract end to end, at the deployed shape (seconds;
        measured by process 0 when the analysis runs data-parallel)."""
        if world_size() > 1:
            return broadcast(self._measured_latency(choice) if is_main() else None)
        return self._measured_latency(choice)

    def _measured_latency(self, choice: dict, loads: int | None = None,
                          nodes: list | None = None) -> float:
        import copy as _copy

        from t2n.analyse.latency import LOADS
        units_map = {u.name: list(u.blocks) for u in self.units}
        config = MixedConfig(units_map, choice, {m.label: m for m in self.bag})
        work = config.apply(_copy.deepcopy(self.model), cache=self.choices())
        return self._end_to_end_seconds(work, loads=LOADS if loads is None else loads,
                                        nodes=nodes)

    def _end_to_end_seconds(self, model: nn.Module, loads: int = 1,
                            nodes: list | None = None) -> float:
        """tract's time for ``model`` deployed: export-llm's decode step (one token after
        DECODE_PAST cached ones) for a causal LM, else a batch of one; the median of
        ``loads`` loads of its bundle, float weights in the analyser's float type."""
        from t2n.analyse.latency import decode_step, model_seconds, time_bundle
        if not self.lm:
            return model_seconds(model, self.deploy_sample(), loads=loads,
                                 dtype=self.float_dtype, nodes=nodes)
        step, inputs = decode_step(model, self._decode_ids())
        return time_bundle(step, inputs, loads=loads, dtype=self.float_dtype, nodes=nodes)

    def _decode_ids(self) -> torch.Tensor:
        from t2n.analyse.latency import DECODE_PAST
        _, kwargs = self.batches()[0][0]
        ids = kwargs["input_ids"][:1]
        if ids.shape[-1] <= DECODE_PAST:   # short windows: repeat them up to the cache length
            ids = ids.repeat(1, -(-(DECODE_PAST + 1) // ids.shape[-1]))
        return ids

    def _macs(self) -> dict:
        if self._macs_by_unit is None:
            est_b, _ = self.batches()
            self._macs_by_unit = count_macs(self.model, self.units, est_b)
        return self._macs_by_unit

    # -- the sweep -----------------------------------------------------------------------------
    def run(self, min_constraint_value=None, max_constraint_value=None, num_configs: int = 5,
            constraint_values=None, constraint_type: str = "size",
            loss_estimator: str = "value", num_real_loss_batches: int = 32,
            measure_latency: bool = True) -> Results:
        """Results keyed by budget (see Results). ``measure_latency``: time every chosen
        configuration end to end in tract (at the deployed shape)."""
        t0 = time.perf_counter()
        problem = self.problem(constraint_type, loss_estimator)
        cheapest = problem.extreme(cheapest=True)
        values = budgets(problem, _relative(min_constraint_value, cheapest),
                         _relative(max_constraint_value, cheapest), num_configs,
                         [_relative(v, cheapest) for v in constraint_values or []])
        _, val_b = self.batches()
        val_b = val_b[:max(1, num_real_loss_batches)]
        with self._placed():
            refs = prepare(reference_outputs(self.model, val_b), self.loss)
        results = Results()
        results.units = [{"name": u.name, "blocks": list(u.blocks)} for u in self.units]
        cache = self.choices()
        float_bytes = FLOAT_BITS[self.float_dtype] // 8
        size_problem = problem if constraint_type == "size" else \
            self.problem("size", loss_estimator)
        macs_problem = problem if constraint_type == "macs" else \
            self.problem("macs", loss_estimator)
        units_map = {u.name: list(u.blocks) for u in self.units}
        seen_configs: dict = {}
        timed: dict = {}

        def time_of(choice: dict) -> float:   # each configuration is timed in tract once
            k = tuple(sorted(choice.items()))
            if k not in timed:
                timed[k] = self.measured_latency(choice)
            return timed[k]
        if constraint_type == "latency" and self._latency[3]:
            # the uniform configurations the estimate was fitted on are measured already
            for c in self._latency[3]["configurations"]:
                timed.setdefault(tuple(sorted(c["choice"].items())), c["measured_s"])
        bar = _bar(len(values), "configurations", self.progress)
        for budget in values:
            choice = solve(problem, budget)
            if choice is None:
                log.warning("analyse: no configuration fits %s <= %g", constraint_type, budget)
                _update(bar)
                continue
            if constraint_type == "latency" and measure_latency:
                choice, tries = self._measured_within(problem, budget, choice, time_of, timed)
            key = tuple(sorted(choice.items()))
            if key not in seen_configs:
                seen_configs[key] = (self._real_loss(choice, cache, val_b, refs),
                                     time_of(choice) if measure_latency else None)
            real, latency = seen_configs[key]
            summary = {"constraint": constraint_type, "budget": budget,
                       "cost": problem.total_cost(choice), "estimate": problem.objective(choice),
                       "estimator": loss_estimator, "real_loss": real, "task": self.task,
                       "float_dtype": self.float_dtype}
            summary["latency_ms"] = None if latency is None else latency * 1e3
            if constraint_type == "latency" and measure_latency:
                summary["latency_tries"] = [
                    {"estimated_ms": problem.total_cost(c) * 1e3, "measured_ms": t * 1e3,
                     "counts": dict(sorted(collections.Counter(c.values()).items()))}
                    for t, c in tries]
            config = MixedConfig(units_map, choice, {m.label: m for m in self.bag}, summary)
            results[budget] = Result(
                budget, config, problem.objective(choice), real, problem.total_cost(choice),
                int(size_problem.total_cost(choice)), macs_problem.total_cost(choice),
                latency, _cache=cache)
            _update(bar)
        _close(bar)
        # uniform configurations: one method wherever it applies, float elsewhere
        for label in cache:
            choice = {u: (label if label in problem.choices[u] else FLOAT) for u in problem.units}
            results.uniform[label] = {
                "cost": problem.total_cost(choice), "bytes": int(size_problem.total_cost(choice)),
                "estimate": problem.objective(choice),
                "real_loss": self._real_loss(choice, cache, val_b, refs)}
        float_choice = {u: FLOAT for u in problem.units}
        results.uniform[FLOAT] = {"cost": problem.total_cost(float_choice),
                                  "bytes": int(size_problem.total_cost(float_choice)),
                                  "estimate": 0.0, "real_loss": 0.0}
        for budget, r in results.items():
            for label, u in results.uniform.items():
                if u["cost"] <= r.cost and r.real_loss is not None \
                        and r.real_loss > u["real_loss"] * (1 + 1e-9) + 1e-12:
                    results.worse_than_uniform.append({"budget": budget, "uniform": label,
                                                       "real_loss": r.real_loss,
                                                       "uniform_real_loss": u["real_loss"]})
        results.spearman = _spearman([r.objective for r in results.values()],
                                     [r.real_loss for r in results.values()])
        self.timings["sweep_s"] = time.perf_counter() - t0
        results.meta = {"task": self.task, "loss": getattr(self.loss, "__name__", self.loss),
                        "constraint": constraint_type, "estimator": loss_estimator,
                        "methods": [m.label for m in self.bag], "units": len(self.units),
                        "estimate_batches": len(self.batches()[0]),
                        "validation_batches": len(val_b), "float_dtype": self.float_dtype,
                        "cheapest": cheapest, "dearest": problem.extreme(cheapest=False),
                        "timings": dict(self.timings)}
        if constraint_type == "latency":
            results.meta["latency_fit"] = self.latency_fit
        return results

    def _measured_within(self, problem: Problem, budget: float, choice: dict, time_of,
                         timed: dict | None = None, tries: int = LATENCY_TRIES) -> tuple:
        """The configuration for a latency ``budget``, ``time_of(config)`` giving its time
        measured end to end in tract: when the time of ``choice`` is over the budget, the
        problem is solved again with the budget lowered by the measured excess over the
        estimate (a term the estimate missed), up to ``tries`` configurations; when the lowered
        budget fits nothing, the fastest configuration by the estimate is tried. The first
        configuration that measures within the budget is returned; else, of the configurations
        measured before (``timed``: {sorted items: seconds}), the one of least estimated loss
        that measured within it; else the one that measured fastest (with a warning).
        Returns (configuration, [(seconds, configuration) of each one measured, in order])."""
        target = budget
        tried: list = []
        for attempt in range(tries):
            seconds = time_of(choice)
            tried.append((seconds, choice))
            if seconds <= budget or attempt == tries - 1:
                break
            target -= seconds - problem.total_cost(choice)   # > 0: the estimate fits the budget
            again = solve(problem, target)
            if again is None:    # nothing is estimated that fast: the fastest there is
                fastest = problem.extreme(cheapest=True)
                again = solve(problem, fastest + abs(fastest) * 1e-9)
            if again is None or any(again == c for _, c in tried):
                break
            log.info("analyse: measured %.3f ms is over the %.3f ms budget; solving again "
                     "for %.3f ms", seconds * 1e3, budget * 1e3, target * 1e3)
            choice = again
        seconds, choice = min(tried, key=lambda t: t[0])
        within = [dict(k) for k, s in (timed or {}).items() if s <= budget]
        if seconds > budget and within:
            choice = min(within, key=problem.objective)
            seconds = time_of(choice)
            tried.append((seconds, choice))
            log.info("analyse: for the %.3f ms budget, a configuration measured before: "
                     "%.3f ms", budget * 1e3, seconds * 1e3)
        if seconds > budget:
            log.warning("analyse: no configuration tried for %.3f ms measures within it in "
                        "tract; the fastest measures %.3f ms", budget * 1e3, seconds * 1e3)
        return choice, tried

    def _real_loss(self, choice: dict, cache: dict, batches, refs) -> float:
        with self._placed():
            return self._real_loss_here(choice, cache, batches, refs)

    def _real_loss_here(self, choice: dict, cache: dict, batches, refs) -> float:
        from t2n.analyse.estimate import _swap
        by_name = {u.name: u for u in self.units}
        swapped = []
        try:
            for u, label in choice.items():
                if label != FLOAT:
                    unit = by_name[u]
                    swapped.append((unit, _swap(self.model, unit, cache[label][u])))
            return measure_loss(self.model, batches, refs, self.loss)
        finally:
            for unit, old in reversed(swapped):
                _swap(self.model, unit, old)


def _relative(value, cheapest: float):
    """A budget as a number, ``"1.25x"`` (a multiple of the cheapest configuration) or, for
    latency, ``"12ms"`` (seconds otherwise)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            if text.endswith("ms"):
                return float(text[:-2]) / 1e3
            if text.endswith("x"):
                return float(text[:-1]) * cheapest
            return float(text)
        except ValueError as e:
            raise OptionError(f"bad budget {value!r}", "give a number, or a multiple of the "
                              "cheapest configuration such as 1.25x") from e
    return float(value)


def _resolve_loss(loss):
    if callable(loss):
        return loss
    from t2n.load import resolve_module_path
    fn = resolve_module_path(str(loss))
    if not callable(fn):
        raise OptionError(f"loss {loss!r} is not callable",
                          "point to a function (reference, output) -> scalar tensor")
    return fn


def _grouped(cal) -> list:
    cal.load()
    if cal.token_ids is not None:
        return _grouped_ids(cal, cal.token_ids)
    return cal.samples


def _grouped_ids(cal, ids: torch.Tensor, size: int = 4) -> list:
    out = []
    for i in range(0, len(ids), size):
        rows = ids[i:i + size]
        kwargs = {"input_ids": rows, "use_cache": False}
        if cal.extra_kwargs.get("attention_mask") is not None:
            kwargs["attention_mask"] = torch.ones_like(rows)
        out.append(((), kwargs))
    return out


def _spearman(a, b) -> float | None:
    pairs = [(x, y) for x, y in zip(a, b) if y is not None and math.isfinite(y)]
    if len(pairs) < 3:
        return None
    from scipy.stats import spearmanr
    xs, ys = zip(*pairs)
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def _bar(total, desc, on):
    if not on:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="", leave=False, dynamic_ncols=True)


def _update(bar):
    if bar is not None:
        bar.update(1)


def _close(bar):
    if bar is not None:
        bar.close()

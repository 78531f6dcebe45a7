"""t2n analyse: units and bags, the exact solver (against brute force), value and grad
estimates, configurations applied, saved and exported (tract runs the mixed bundle), the
results folder and its HTML report in a real headless browser."""
import copy
import itertools
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

import t2n
from t2n.analyse import Analyser, Bag, MixedConfig
from t2n.analyse.blocks import find_units
from t2n.analyse.solve import Problem, solve
from t2n.errors import CompressionError, LoadError, OptionError
from t2n.quant.int8 import QuantizedLinear
from t2n.quant.q4_0 import Q4_0Tensor
from test_calibrated import tiny_llama
from test_calibrated_cli import PROSE, assert_user_error, tiny_folder  # noqa: F401
from test_calibrated_cli import t2n as run_t2n


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.GELU(),
                         nn.Linear(128, 10)).eval()


def inputs(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 64, generator=g) for _ in range(n)]


# -- units and bags ------------------------------------------------------------------------------
def test_tied_weights_are_one_unit_and_bad_block_lists_are_refused():
    model = tiny_llama()
    units = find_units(model)
    names = [u.name for u in units]
    assert "model.embed_tokens+lm_head" in names and len(units) == 15
    for blocks, problem in [(["model.layers.0.mlp.up_proj"] * 2, "named twice"),
                            (["model.layers.0.mlp", "model.layers.0.mlp.up_proj"], "inside"),
                            (["model.nothing"], "no module")]:
        with pytest.raises(OptionError, match=problem):
            find_units(model, blocks)


def test_bags_compose_and_check_their_options():
    a = Bag("min_max_q4_0_all", "gptq_q4_0_all[damp=0.02]")
    b = Bag(a, "ptq_int8", "min_max_q4_0_all")
    assert [m.label for m in b] == ["min_max_q4_0_all", "gptq_q4_0_all[damp=0.02]", "ptq_int8"]
    b.check()
    with pytest.raises(CompressionError, match="has no option 'dampp'"):
        Bag("gptq_q4_0_all[dampp=1]").check()
    with pytest.raises(CompressionError, match="unknown compression 'gptq_q4_0_al'"):
        Bag("gptq_q4_0_al").check()
    with pytest.raises(CompressionError, match="always a choice"):
        Bag("float")


# -- the solver ----------------------------------------------------------------------------------
def _brute(problem: Problem, budget: float):
    best = None
    for combo in itertools.product(*(problem.choices[u] for u in problem.units)):
        config = dict(zip(problem.units, combo))
        if problem.total_cost(config) <= budget:
            key = problem.objective(config)
            if best is None or key < best[0] - 1e-15:
                best = (key, config)
    return best


def test_the_solver_is_exact_against_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(12):
        units = [f"u{i}" for i in range(5)]
        choices = {u: ["float", "a", "b"] if i % 2 else ["float", "a"]
                   for i, u in enumerate(units)}
        est, cost = {}, {}
        for u in units:
            full = float(rng.integers(50, 100))
            for c in choices[u]:
                est[(u, c)] = 0.0 if c == "float" else float(rng.random())
                cost[(u, c)] = full if c == "float" else float(rng.integers(5, 49))
        problem = Problem(units, choices, est, cost, fixed=7.0)
        lo, hi = problem.extreme(cheapest=True), problem.extreme(cheapest=False)
        for budget in np.linspace(lo, hi, 6):
            got = solve(problem, float(budget))
            want = _brute(problem, float(budget))
            assert got is not None and problem.total_cost(got) <= budget
            assert problem.objective(got) == pytest.approx(want[0], abs=1e-9), (trial, budget)
        assert solve(problem, lo - 1) is None


# -- estimates, configurations -------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp_results():
    model = mlp()
    bag = Bag("min_max_q4_0_all", "grid_mse_q4_0_all", "ptq_int8")
    analyser = Analyser(model, bag, calibration_data=inputs(), task="classification")
    results = analyser.run(num_configs=6, measure_latency=False)
    return model, analyser, results


def test_value_estimates_are_the_measured_loss_of_each_single_choice(mlp_results):
    model, analyser, results = mlp_results
    est = analyser.estimates("value")
    assert {label for _, label in est} == {"min_max_q4_0_all", "grid_mse_q4_0_all",
                                           "ptq_int8"}
    (unit, label), value = next(iter(sorted(est.items())))
    choice = {u.name: "float" for u in analyser.units}
    choice[unit] = label
    est_b, _ = analyser.batches()
    from t2n.analyse.estimate import reference_outputs
    refs = reference_outputs(model, est_b)
    assert analyser._real_loss(choice, analyser.choices(), est_b, refs) == \
        pytest.approx(value, rel=1e-6)
    # per-tensor 8-bit is measured, not assumed better than 4 bits
    assert all(v > 0 for v in est.values())


def test_the_sweep_meets_each_budget_and_ends_at_the_float_model(mlp_results):
    model, analyser, results = mlp_results
    budgets = sorted(results)
    assert len(budgets) == 6
    for b in budgets:
        assert results[b].cost <= b
    first, last = results[budgets[0]], results[budgets[-1]]
    assert set(last.config.choices.values()) == {"float"} and last.real_loss == 0.0
    assert first.real_loss > 0 and set(first.config.choices.values()) != {"float"}
    assert results.uniform["float"]["real_loss"] == 0.0
    assert results.spearman is not None and results.spearman > 0.8
    # each configuration is at least as good as the uniform ones it can afford
    assert results.worse_than_uniform == []


def test_a_configuration_applies_removes_saves_and_exports_to_tract(mlp_results, tmp_path):
    model, analyser, results = mlp_results
    budget = sorted(results)[1]
    result = results[budget]
    x = inputs(1, seed=5)[0]
    with torch.no_grad():
        float_out = model(x)
    work = copy.deepcopy(model)
    result.apply(work)
    kinds = {b: type(work.get_submodule(b)).__name__ for b in ("0", "2", "4")}
    for unit, choice in result.config.choices.items():
        mod = work.get_submodule(unit)
        if choice == "ptq_int8":
            assert isinstance(mod, QuantizedLinear)
        elif choice == "float":
            assert mod is model.get_submodule(unit) or torch.equal(mod.weight,
                                                                   model.get_submodule(unit).weight)
        else:
            assert isinstance(mod.weight, Q4_0Tensor)
    result.remove(work)
    with torch.no_grad():
        assert torch.equal(work(x), float_out)
    path = result.save(tmp_path / "mixed.json")
    loaded = MixedConfig.load(path)
    assert loaded.choices == result.config.choices
    # applied from the file alone (the methods run again): the same modules
    again = loaded.apply(copy.deepcopy(model), calibration=None) if "ptq_int8" not in \
        loaded.choices.values() else None
    if again is not None:
        assert {b: type(again.get_submodule(b)).__name__ for b in ("0", "2", "4")} == kinds
    exported = t2n.export(copy.deepcopy(model), x, tmp_path / "bundle",
                          compression="mixed_config", compression_options={"config": str(path)},
                          calibration_data=inputs())
    assert exported.verification.passed
    got, _ = t2n.verify.run_tract(exported.path, [x.numpy()])
    work = result.apply(copy.deepcopy(model))
    with torch.no_grad():
        want = work(x).numpy()
    assert np.abs(got[0] - want).max() < 0.05
    q4 = [p for p in (tmp_path / "bundle").rglob("*.dat") if b"\x40\x30" in p.read_bytes()[:128]]
    expected_q4 = sum(1 for c in result.config.choices.values() if c.endswith("q4_0_all"))
    assert len(q4) == expected_q4


@pytest.mark.slow   # exports and times every distinct block in tract
def test_latency_budgets_are_met_by_the_configuration_measured_in_tract(mlp_results):
    _, analyser, _ = mlp_results
    lat, fixed = analyser._latencies()
    whole = analyser.whole_model_seconds
    assert whole > 0 and all(v > 0 for v in lat.values())
    assert {label for _, label in lat} == {"float", "min_max_q4_0_all", "grid_mse_q4_0_all",
                                           "ptq_int8"}
    # blocks of the same kind, shape and storage format are timed once: two Q4_0 methods agree
    assert all(lat[(u.name, "min_max_q4_0_all")] == lat[(u.name, "grid_mse_q4_0_all")]
               for u in analyser.units)
    # the fit: the float model and one uniform configuration per storage format, end to end
    fit = analyser.latency_fit
    assert [c["uniform"] for c in fit["configurations"]] == ["float", "min_max_q4_0_all",
                                                            "ptq_int8"]
    assert fit["configurations"][0]["measured_s"] == whole and fit["rest_s"] > 0
    assert all(c["measured_s"] > 0 for c in fit["configurations"])
    assert all(v > 0 for v in fit["scales"].values())
    # the rest (every block a stand-in) is timed on the whole model's clock, below it
    assert fit["rest_s"] < whole
    # tract's profiles show every block's matmul: each choice is priced by its time inside
    # the model, and each uniform configuration's estimate is its measurement
    assert fit["in_model"] == fit["choices"] == len(lat)
    assert all(c["estimated_s"] == pytest.approx(c["measured_s"])
               for c in fit["configurations"])
    problem = analyser.problem("latency", "value")
    slowest = problem.extreme(cheapest=False)
    fastest = problem.extreme(cheapest=True)
    # budgets in ms as a user writes them (rounded up: a budget rounded below the fastest
    # configuration would fit nothing)
    results = analyser.run(constraint_type="latency",
                           constraint_values=[f"{fastest * 1.001e3:.6f}ms",
                                              f"{slowest * 1.001e3:.6f}ms",
                                              f"{fastest * 0.5e3:.6f}ms"])
    assert len(results) == 2            # half the fastest configuration fits nothing
    for budget, r in results.items():
        assert r.cost <= budget and r.latency_s is not None and r.latency_s > 0
        assert r.config.summary["latency_ms"] == pytest.approx(r.latency_s * 1e3)


def _halving_analyser():
    """An analyser of mlp() whose latency table is set: each unit 1 ms float, 0.5 ms Q4_0."""
    analyser = Analyser(mlp(), Bag("min_max_q4_0_all"), calibration_data=inputs(),
                        task="classification")
    lat = {}
    for u in analyser.units:
        lat[(u.name, "float")], lat[(u.name, "min_max_q4_0_all")] = 1e-3, 0.5e-3
    analyser._latency = (lat, 0.0, 3e-3, {})
    return analyser, lat


def test_a_latency_budget_is_solved_again_when_tract_measures_it_over():
    """The latency a configuration measures end to end can exceed its per-block estimate (a
    term the sum misses, or drift): the analyser then solves again under the budget lowered by
    that excess, so that what it returns measures within the budget. A configuration that
    measures what it was estimated at is returned as first solved."""
    analyser, lat = _halving_analyser()

    def estimate(choice):
        return sum(lat[(u, c)] for u, c in choice.items())
    for missing in (0.3e-3, 0.0):
        calls = []

        def measured(choice, missing=missing):
            calls.append(dict(choice))
            return estimate(choice) + missing
        analyser.measured_latency = measured
        (r,) = analyser.run(constraint_values=["2ms"], constraint_type="latency",
                            num_real_loss_batches=2).values()
        first = estimate(calls[0])
        assert first == pytest.approx(2e-3)               # the plain solve fills the budget
        assert r.latency_s <= 2e-3 + 1e-12, (missing, r.latency_s)
        if missing:
            assert len(calls) == 2 and r.cost == pytest.approx(1.5e-3)
            assert r.latency_s == pytest.approx(1.8e-3)
        else:
            assert len(calls) == 1 and r.cost == pytest.approx(first)


def test_when_the_lowered_budget_fits_nothing_the_fastest_configuration_is_tried():
    """A configuration can measure so far over its estimate that the budget lowered by the
    excess fits nothing: the fastest configuration by the estimate is then measured, and it
    is returned when it is within the budget (here the excess comes with float blocks)."""
    analyser, lat = _halving_analyser()
    calls = []

    def measured(choice):
        calls.append(dict(choice))
        floats = any(c == "float" for c in choice.values())
        return sum(lat[(u, c)] for u, c in choice.items()) + (1.2e-3 if floats else 0.0)
    analyser.measured_latency = measured
    (r,) = analyser.run(constraint_values=["2ms"], constraint_type="latency",
                        num_real_loss_batches=2).values()
    assert len(calls) == 2 and "float" in calls[0].values()     # 2.0 ms estimated, 3.2 measured
    assert set(r.config.choices.values()) == {"min_max_q4_0_all"}
    assert r.latency_s == pytest.approx(1.5e-3)
    # when nothing measures within the budget, the configuration that measured fastest is kept
    analyser.measured_latency = lambda choice: calls.append(dict(choice)) or 9e-3 - \
        sum(lat[(u, c)] for u, c in choice.items())
    calls.clear()
    (r,) = analyser.run(constraint_values=["2ms"], constraint_type="latency",
                        num_real_loss_batches=2).values()
    assert len(calls) == 2 and r.latency_s == pytest.approx(7e-3)
    assert "float" in r.config.choices.values()


def test_the_latency_estimate_scales_each_storage_format_to_its_end_to_end_time(monkeypatch):
    """A block timed alone has its weights in the cache; in the whole model they stream from
    memory, at a cost that depends on the storage format. In a made-up engine where every
    Q4_0 block is slower alone than its float one but faster in the model, the factors found
    from the rest of the model (timed without its blocks), the float model and one uniform
    configuration per storage format give every configuration's true time, Q4_0 ranks as
    faster, and a budget between the two is met at its first solve."""
    from t2n.analyse import latency
    analyser = Analyser(mlp(), Bag("min_max_q4_0_all", "grid_mse_q4_0_all"),
                        calibration_data=inputs(), task="classification")
    rest, factor = 2e-3, {"float": 3.0, "min_max_q4_0_all": 0.5, "grid_mse_q4_0_all": 0.5}
    alone = {k: 3e-5 if k[1] == "float" else 5e-5 for k in analyser._unit_bytes()}

    def truth(choice):
        return rest + sum(factor[c] * alone[(u, c)] for u, c in choice.items())
    everything_float = {u.name: "float" for u in analyser.units}
    monkeypatch.setattr(latency, "block_latencies", lambda *a, **k: dict(alone))
    # an engine whose profiles name no node: every block counts its time alone x its factor
    monkeypatch.setattr(analyser, "_end_to_end_seconds", lambda model, loads=1, nodes=None:
                        rest if any(isinstance(m, latency.StandIn) for m in model.modules())
                        else truth(everything_float))
    measured = []
    monkeypatch.setattr(analyser, "_measured_latency", lambda choice, loads=None, nodes=None:
                        measured.append(dict(choice)) or truth(choice))
    fit = analyser.latency_fit
    assert fit["rest_s"] == rest
    assert fit["scales"] == pytest.approx(factor)
    # the two Q4_0 methods store alike (their blocks time the same): one uniform measurement
    assert [r["uniform"] for r in fit["configurations"]] == ["float", "min_max_q4_0_all"]
    problem = analyser.problem("latency", "value")
    for u in problem.units:
        assert alone[(u, "min_max_q4_0_all")] > alone[(u, "float")]
        assert problem.cost[(u, "min_max_q4_0_all")] < problem.cost[(u, "float")]
    half = {u: ("grid_mse_q4_0_all" if i % 2 else "float") for i, u in enumerate(problem.units)}
    assert problem.total_cost(half) == pytest.approx(truth(half))
    fastest, slowest = problem.extreme(cheapest=True), problem.extreme(cheapest=False)
    budget = (fastest + slowest) / 2
    measured.clear()
    (r,) = analyser.run(constraint_values=[budget], constraint_type="latency",
                        num_real_loss_batches=2).values()
    assert len(measured) == 1 and r.latency_s <= budget
    assert r.latency_s == pytest.approx(r.cost)
    assert r.config.summary["latency_ms"] == pytest.approx(r.latency_s * 1e3)
    # a budget that only the uniform Q4_0 configuration meets, the estimate being off: the
    # configurations tried measure over it, the one measured for the fit is taken
    monkeypatch.setattr(analyser, "_measured_latency", lambda choice, **kw: 1.0)
    (r,) = analyser.run(constraint_values=[fastest * 1.05], constraint_type="latency",
                        num_real_loss_batches=2).values()
    assert set(r.config.choices.values()) == {"min_max_q4_0_all"}
    assert r.latency_s == pytest.approx(fastest)
    tries = r.config.summary["latency_tries"]
    assert [t["measured_ms"] for t in tries[:-1]] == [1e3] * (len(tries) - 1)
    assert tries[-1]["measured_ms"] == pytest.approx(fastest * 1e3)


def test_blocks_are_priced_by_their_time_inside_the_model_where_tracts_profile_shows_it(
        monkeypatch):
    """One factor per storage format cannot price a block whose weights do not fit the cache
    alone (a large lm_head: its time alone is already its time in the model) beside blocks that
    do. Where tract's profile of the uniform configurations shows a block's matmul, the block
    counts the time it takes there, and a mixed configuration's estimate is its true time; the
    factors alone would be off."""
    from t2n.analyse import latency
    analyser = Analyser(mlp(), Bag("min_max_q4_0_all"), calibration_data=inputs(),
                        task="classification")
    units = [u.name for u in analyser.units]
    rest = 2e-3
    alone = {(u, c): 1e-4 for u in units for c in ("float", "min_max_q4_0_all")}
    inside = {(u, "float"): 3e-4 for u in units} | {(u, "min_max_q4_0_all"): 1.5e-4
                                                    for u in units}
    inside[(units[0], "float")] = 1e-4          # the one that runs from memory alone too
    counts = {"0": 64 * 128, "2": 128 * 128, "4": 128 * 10}

    quantize = 5e-5     # the Q4_0 format adds a node beside each of its matmuls

    def truth(choice):
        return rest + sum(inside[(u, c)] + (quantize if c != "float" else 0.0)
                          for u, c in choice.items())

    def profile(choice, nodes):
        if nodes is not None:
            nodes += [{"node_name": f"fused_{u}", "op_name": "OptMatMul",
                       "cost": {"FMA(F32)": str(counts[u])}, "secs_per_iter": inside[(u, c)]}
                      for u, c in choice.items()]
            nodes += [{"node_name": f"cast_{u}", "op_name": "Cast", "secs_per_iter": quantize}
                      for u, c in choice.items() if c != "float"]
            nodes.append({"node_name": "relu", "op_name": "Relu", "secs_per_iter": rest})
        return truth(choice)
    everything_float = {u: "float" for u in units}

    def block_table(units_, choices, inputs_, progress=None, dtype=None, per_block=None):
        per_block.update({(u, c): t for (u, c), t in alone.items()})   # one block per unit
        return dict(alone)
    monkeypatch.setattr(latency, "block_latencies", block_table)
    monkeypatch.setattr(analyser, "_end_to_end_seconds", lambda model, loads=1, nodes=None:
                        rest if any(isinstance(m, latency.StandIn) for m in model.modules())
                        else profile(everything_float, nodes))
    monkeypatch.setattr(analyser, "_measured_latency",
                        lambda choice, loads=None, nodes=None: profile(choice, nodes))
    fit = analyser.latency_fit
    assert fit["in_model"] == len(units) * 2 and fit["fixed_s"] == pytest.approx(rest)
    # the added nodes are spread over the format's blocks: its uniform estimate is measured
    assert fit["in_model_scales"]["min_max_q4_0_all"] == pytest.approx(2e-4 / 1.5e-4)
    assert all(c["estimated_s"] == pytest.approx(c["measured_s"])
               for c in fit["configurations"])
    problem = analyser.problem("latency", "value")
    mixed = {u: ("float" if u == units[0] else "min_max_q4_0_all") for u in units}
    assert problem.total_cost(mixed) == pytest.approx(truth(mixed))
    # what one factor per format says of it: the float block that streams alone is overpriced
    factor = fit["scales"]
    by_factors = rest + sum(factor[c] * alone[(u, c)] for u, c in mixed.items())
    assert abs(by_factors - truth(mixed)) > 1e-5
    # a profile that does not show the blocks leaves the factors in place
    analyser._latency = None
    monkeypatch.setattr(analyser, "_measured_latency",
                        lambda choice, loads=None, nodes=None: truth(choice))
    monkeypatch.setattr(analyser, "_end_to_end_seconds", lambda model, loads=1, nodes=None:
                        rest if any(isinstance(m, latency.StandIn) for m in model.modules())
                        else truth(everything_float))
    assert analyser.latency_fit["in_model"] == 0
    assert analyser.problem("latency", "value").total_cost(mixed) == pytest.approx(by_factors)


def test_the_rest_of_the_model_is_timed_without_its_blocks():
    """The stand-ins hold no weights, keep each block's output shape (for the deployed token
    and for a prefill's many), and tract runs the decode step built on them."""
    from t2n.analyse.latency import StandIn, deploy_inputs, without_blocks
    model = tiny_llama()
    analyser = Analyser(model, Bag("min_max_q4_0_all"), samples=2, seqlen=16)
    inputs = deploy_inputs(model, analyser.units, analyser.deploy_sample(), True)
    rest = without_blocks(model, analyser.units, inputs)
    blocks = [b for u in analyser.units for b in u.blocks]
    assert all(isinstance(rest.get_submodule(b), StandIn) for b in blocks)
    assert not any(isinstance(m, (nn.Linear, nn.Embedding)) for m in rest.modules())
    assert isinstance(model.get_submodule(blocks[0]), (nn.Linear, nn.Embedding))  # a copy
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, rest(input_ids=ids).logits
    assert got.shape == want.shape and not got.any()
    assert analyser._end_to_end_seconds(rest) > 0


def test_a_model_made_only_of_stand_ins_is_profiled_by_tract(tmp_path):
    """Every block of the MLP is a stand-in, so its output is tied to the input by nothing else:
    the tie must survive tract's optimiser (a multiplication by a zero constant is folded, the
    output becomes a constant and tract's profiler aborts the process). Its time is the
    profiler's, on the clock of the whole model's, and below it."""
    from t2n.analyse.latency import deploy_inputs, time_bundle, without_blocks
    analyser = Analyser(mlp(), Bag("min_max_q4_0_all"), calibration_data=inputs(),
                        task="classification")
    sample = analyser.deploy_sample()
    rest = without_blocks(analyser.model, analyser.units,
                          deploy_inputs(analyser.model, analyser.units, sample, False))
    args = tuple(sample[0])
    assert time_bundle(rest, args, keep=tmp_path / "rest") > 0
    graph = (tmp_path / "rest" / "graph.nnef").read_text()
    assert "sub(" in graph and not list((tmp_path / "rest").glob("*weight*"))
    with torch.no_grad():
        out = rest(*args)
        assert not out.any() and out.shape == analyser.model(*args).shape


def test_format_factors_fill_what_each_uniform_configuration_measures():
    from t2n.analyse.latency import format_scales
    alone = {("a", "float"): 1.0, ("b", "float"): 2.0, ("a", "q"): 2.0}
    measured = [("float", {"a": "float", "b": "float"}, 10.0),       # 9 over the rest
                ("q", {"a": "q", "b": "float"}, 8.0)]                 # b float: 6; a: 1
    assert format_scales(alone, 1.0, measured) == {"float": 3.0, "q": 0.5}
    # a format measuring less than the rest and the other blocks: factor 0, never below
    assert format_scales(alone, 1.0, [measured[0], ("q", {"a": "q", "b": "float"}, 5.0)]) \
        == {"float": 3.0, "q": 0.0}


def _node(name, op="OptMatMul", fma=None, us=1.0):
    node = {"node_name": name, "op_name": op, "secs_per_iter": us * 1e-6}
    if fma is not None:
        node["cost"] = {"FMA(F32)": str(fma)}
    return node


def test_block_times_inside_the_model_are_read_from_tracts_profile_by_what_they_compute():
    """A block's matmul is found by its multiply-accumulates whatever tract named it (the
    node it was fused into), a large one also as chunks (the first keeps the bare name, the
    last may be smaller), with its packing node; a count computed by more nodes than blocks
    is left out."""
    from t2n.analyse.latency import in_model_times
    nodes = [_node("linear", fma=100, us=3.0), _node("linear.pack_b", op="OptMatMulPack"),
             _node("add_6_1", fma=100, us=5.0),                       # fused into an add
             _node("big", fma=250, us=2.0), _node("big_1", fma=250, us=2.0),
             _node("big_2", fma=250, us=2.0), _node("big_3", fma=250, us=2.0),
             _node("big.pack_b", op="OptMatMulPack", us=0.5),
             # rows that do not divide evenly: the last chunk is smaller
             _node("part", fma=300, us=1.0), _node("part_1", fma=300, us=1.0),
             _node("part_2", fma=70, us=0.5),
             # look-alikes: a last chunk larger than the others (390), a gap in the numbers (400)
             _node("odd", fma=90, us=1.0), _node("odd_1", fma=300, us=1.0),
             _node("gap", fma=200, us=1.0), _node("gap_2", fma=200, us=1.0),
             _node("sdpa", fma=40, us=7.0), _node("attn_1", fma=40, us=7.0),
             _node("softmax", op="Softmax", us=9.0)]
    blocks = {"a": 100, "b": 100, "head": 1000, "k": 40, "uneven": 670}
    times = in_model_times(nodes, blocks)
    # a: 3 + its packing 1, b: 5 -> their mean; the head: four chunks and their packing
    assert times == {"a": pytest.approx(4.5e-6), "b": pytest.approx(4.5e-6),
                     "head": pytest.approx(8.5e-6), "uneven": pytest.approx(2.5e-6)}
    # look-alikes: two nodes compute what the one block "k" does (an attention product too):
    # k is left out above; chunks that do not add up to a block are not one, nor are nodes
    # whose last "chunk" is the larger or whose numbers skip one
    assert in_model_times(nodes, {"k": 40, "x": 750, "y": 390, "z": 400}) == {}
    assert in_model_times(nodes, {"k": 40, "k2": 40}) == {"k": pytest.approx(7e-6),
                                                          "k2": pytest.approx(7e-6)}


@pytest.mark.slow   # exports and times the whole decode step and each block in tract (about 75 s)
def test_a_causal_lm_is_timed_at_export_llms_decode_step(tmp_path, monkeypatch):
    """End to end, a causal LM is one token after a cache of DECODE_PAST tokens: the bundle
    timed is that step (tract's logits and new cache are torch's) and the analyser uses it."""
    import tract

    from t2n.analyse import latency
    model = tiny_llama()
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    step, inputs = latency.decode_step(model, ids, past=32)
    assert tuple(inputs[0].shape) == (1, 1) and len(inputs) == 1 + 2 * 2
    assert all(t.shape[2] == 32 for t in inputs[1:])
    assert latency.time_bundle(step, inputs, keep=tmp_path / "step") > 0
    runnable = tract.nnef().with_tract_extra().with_tract_transformers() \
        .load(str(tmp_path / "step")).into_runnable()
    got = [v.to_numpy() for v in runnable.run([t.numpy() for t in inputs])]
    with torch.no_grad():
        want = [t.numpy() for t in step(*inputs)]
    assert len(got) == len(want) == 1 + 2 * 2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="window of 41 tokens"):
        latency.decode_step(model, ids, past=40)
    # the analyser times the decode step, not a forward over a whole window
    calls = []
    real = latency.decode_step
    monkeypatch.setattr(latency, "decode_step",
                        lambda m, i, past=latency.DECODE_PAST: calls.append(past) or real(m, i, past))
    analyser = Analyser(model, Bag("min_max_q4_0_all"), samples=2, seqlen=16)
    assert analyser._end_to_end_seconds(model) > 0 and calls == [latency.DECODE_PAST]


def test_bad_configuration_files_are_refused_with_the_fix(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(LoadError, match="not a t2n mixed configuration"):
        MixedConfig.load(bad)
    with pytest.raises(LoadError, match="does not exist"):
        MixedConfig.load(tmp_path / "none.json")
    config = MixedConfig({"0": ["0"]}, {"0": "min_max_q4_0_all"},
                         {"min_max_q4_0_all": Bag("min_max_q4_0_all").methods[
                             "min_max_q4_0_all"]})
    with pytest.raises(CompressionError, match="no module 'zz'"):
        MixedConfig({"zz": ["zz"]}, {"zz": "float"}, {}).apply(mlp())
    assert config.counts() == {"min_max_q4_0_all": 1}


def test_grad_estimates_rank_the_choices_as_measured_losses_do():
    """The Fisher estimate needs no forward pass per choice; on a tiny LLM its ranking of
    (unit, method) choices follows the measured one."""
    from scipy.stats import spearmanr
    model = tiny_llama()
    analyser = Analyser(model, Bag("min_max_q4_0_all", "grid_mse_q4_0_all"), samples=4,
                        seqlen=32)
    value, grad = analyser.estimates("value"), analyser.estimates("grad")
    keys = sorted(value)
    rho = spearmanr([value[k] for k in keys], [grad[k] for k in keys]).statistic
    assert rho > 0.7, rho
    # the estimate is of the right size: within a factor 3 of the measured loss in total
    assert 1 / 3 < sum(grad.values()) / sum(value.values()) < 3


def _single_choice_losses(analyser, model, keys):
    from t2n.analyse.estimate import reference_outputs
    est_b, _ = analyser.batches()
    refs = reference_outputs(model, est_b)
    out = {}
    for unit, label in keys:
        choice = {u.name: "float" for u in analyser.units}
        choice[unit] = label
        out[(unit, label)] = analyser._real_loss(choice, analyser.choices(), est_b, refs)
    return out


def test_value_estimates_replay_the_float_layers_before_each_choice():
    """A choice in decoder layer k runs from layer k on (the float outputs of the layers before
    it are replayed); its estimate is still the loss of the whole model with that choice."""
    from t2n.analyse.estimate import _Replay
    model = tiny_llama(layers=3)
    analyser = Analyser(model, Bag("min_max_q4_0_all"), samples=4, seqlen=16)
    est = analyser.estimates("value")
    replay = _Replay(model, analyser.units, analyser.batches()[0])
    assert replay.start["model.layers.0.self_attn.q_proj"] == 0
    assert replay.start["model.layers.1.mlp.down_proj"] == 1
    assert replay.start["model.layers.2.self_attn.o_proj"] == 2
    assert replay.start["model.embed_tokens+lm_head"] == 0      # the tied table is gathered first
    measured = _single_choice_losses(analyser, model, est)
    for key, value in est.items():
        assert value == pytest.approx(measured[key], rel=1e-5), key


class TwiceThrough(nn.Module):
    """A look-alike: one stack of layers applied twice per forward, so a layer's outputs
    cannot be replayed batch by batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(3))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        for _ in range(2):
            for layer in self.layers:
                x = torch.tanh(layer(x))
        return self.head(x)


def test_analysis_data_measures_the_estimates_while_methods_calibrate_on_theirs(tmp_path):
    """analysis_data='sampled': the estimates and real losses run on text sampled from the
    model, while the calibrated methods still read the calibration data."""
    model = tiny_llama()
    ids = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(3))
    np.savez(tmp_path / "cal.npz", input_ids=ids.numpy())
    bag = Bag("imatrix_q4_0_all")
    kw = dict(samples=2, seqlen=16)
    mixed = Analyser(model, bag, calibration_data=str(tmp_path / "cal.npz"),
                     analysis_data="sampled", **kw)
    own = Analyser(model, bag, calibration_data=str(tmp_path / "cal.npz"), **kw)
    free = Analyser(model, bag, calibration_data=None, **kw)

    def rows(analyser):
        est, val = analyser.batches()
        return [r.tolist() for b in est + val for r in b[1]["input_ids"]]
    assert rows(mixed) == rows(free)
    assert not set(map(tuple, rows(mixed))) & set(map(tuple, ids.tolist()))
    assert set(map(tuple, rows(own))) <= set(map(tuple, ids.tolist()))

    def weights(analyser):
        return {u: mods[0].weight.dequantize()
                for u, mods in analyser.choices()["imatrix_q4_0_all"].items()}
    w_mixed, w_own, w_free = weights(mixed), weights(own), weights(free)
    assert all(torch.equal(w_mixed[u], w_own[u]) for u in w_own)
    assert any(not torch.equal(w_mixed[u], w_free[u]) for u in w_free)
    with pytest.raises(OptionError, match="sampled from a causal LM"):
        Analyser(mlp(), Bag("min_max_q4_0_all"), calibration_data=inputs(),
                 analysis_data="sampled", task="classification")


def test_layers_that_run_twice_per_batch_are_not_replayed():
    from t2n.analyse.estimate import _Replay
    model = TwiceThrough().eval()
    data = [torch.randn(8, 32, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    analyser = Analyser(model, Bag("min_max_q4_0_all"), calibration_data=data,
                        task="classification")
    replay = _Replay(model, analyser.units, analyser.batches()[0])
    assert set(replay.start.values()) == {0}
    est = analyser.estimates("value")
    measured = _single_choice_losses(analyser, model, est)
    for key, value in est.items():
        assert value == pytest.approx(measured[key], rel=1e-5), key


def test_each_storage_format_is_costed_by_its_own_bytes():
    """Q4_0 18 bytes per 32 values, int8 rows 1 byte per value and a float scale per row,
    float 4 (f32) or 2 (f16) bytes per value; biases stay float."""
    model = mlp()
    analyser = Analyser(model, Bag("min_max_q4_0_all", "w8_per_row"), calibration_data=inputs(),
                        task="classification")
    for dtype, float_bytes in (("f32", 4), ("f16", 2)):
        analyser.float_dtype = dtype
        problem = analyser.problem("size", "value")
        for unit in analyser.units:
            lin = unit.modules[0]
            n, k = lin.weight.shape
            bias = n * float_bytes
            assert problem.cost[(unit.name, "float")] == n * k * float_bytes + bias
            assert problem.cost[(unit.name, "min_max_q4_0_all")] == n * k // 32 * 18 + bias
            assert problem.cost[(unit.name, "w8_per_row")] == n * k + 4 * n + bias
    analyser.float_dtype = "f32"


@pytest.mark.gpu
def test_estimates_on_cuda_match_the_cpu_ones():
    bag = Bag("min_max_q4_0_all", "ptq_int8")
    cpu = Analyser(mlp(), bag, calibration_data=inputs(), task="classification")
    gpu = Analyser(mlp(), bag, calibration_data=inputs(), task="classification",
                   device="cuda")
    for kind in ("value", "grad"):
        a, b = cpu.estimates(kind), gpu.estimates(kind)
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=2e-2, abs=1e-9), (kind, k)
    assert next(gpu.model.parameters()).device.type == "cpu"   # back for export


def test_a_cuda_device_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(OptionError, match="sees no CUDA device"):
        Analyser(mlp(), Bag("min_max_q4_0_all"), calibration_data=inputs(), device="cuda")


def test_results_folder_and_report_page(mlp_results, tmp_path):
    _, _, results = mlp_results
    first = results[sorted(results)[0]]
    first.register_text("note", "hello from the first configuration")
    first.register_benchmarks("speed", {"tokens/s": 123.4})
    folder = results.save(tmp_path / "out")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["configs", "pareto.png", "report.html", "results.json", "table.md"]
    assert len(list((folder / "configs").glob("budget_*.json"))) == len(results)
    assert (folder / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((folder / "results.json").read_text())
    assert len(data["rows"]) == len(results) and "float" in data["uniform"]
    page = (folder / "report.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")   # offline
    assert "hello from the first configuration" in page
    with pytest.raises(t2n.T2NError, match="not empty"):
        results.save(folder)


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("T2N_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (scripts/test.sh installs it)")
        pytest.skip("no chromium: scripts/test.sh installs it")
    return exe


def test_the_report_slider_changes_the_configuration_shown_in_a_browser(mlp_results,
                                                                        tmp_path):
    exe = _chromium()
    _, _, results = mlp_results
    folder = results.save(tmp_path / "out")
    url = (folder / "report.html").resolve().as_uri() + "#selftest"
    proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=5000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    import html
    import re
    m = re.search(r'data-selftest="([^"]*)"', proc.stdout)
    assert m, proc.stdout[:500]
    state = json.loads(html.unescape(m.group(1)))
    # the page first shows the cheapest configuration, then the slider moved to the last
    assert state["selected"] == str(len(results) - 1)
    assert state["before"] != state["after"]
    assert "float" in state["after"] and "float" not in state["before"]


# -- the command line ----------------------------------------------------------------------------
@pytest.mark.slow   # starts several t2n processes
def test_analyse_cli_then_export_llm_with_a_mixed_config(tiny_folder, tmp_path):
    folder = tiny_folder
    # the LLM entry point of the API on the same folder
    analyser = Analyser.for_llm(folder, Bag("min_max_q4_0_all"), samples=2, seqlen=16)
    assert analyser.task == "causal-lm" and analyser.tokenizer is not None
    assert len(analyser.units) == 15
    (tmp_path / "calib.txt").write_text(PROSE * 4)
    proc = run_t2n(tmp_path, "analyse", folder, "-o", "out", "-m", "min_max_q4_0_all",
               "-m", "grid_mse_q4_0_all", "--calibration-data", "calib.txt", "--samples", "4",
               "--seqlen", "16", "--num-configs", "3", "--real-loss-batches", "2",
                   "--no-latency", "--analysis-data", "sampled")
    assert proc.returncode == 0, proc.stderr
    assert "3 configuration(s)" in proc.stdout and "| size budget |" in proc.stdout
    configs = sorted((tmp_path / "out" / "configs").glob("*.json"))
    assert len(configs) == 3
    proc = run_t2n(tmp_path, "export-llm", "-s", folder, "-e", "llm", "--mixed-config", configs[1])
    assert proc.returncode == 0 and "verified in tract" in proc.stdout, proc.stderr
    proc = run_t2n(tmp_path, "export", folder, "b.tgz", "--mixed-config", configs[1], "-c",
               "min_max_q4_0_all")
    assert_user_error(proc, "give -c or --mixed-config, not both")
    assert not (tmp_path / "b.tgz").exists()
    proc = run_t2n(tmp_path, "analyse", folder, "-o", "out2")
    assert_user_error(proc, "needs at least one method", "-m NAME")
    assert not (tmp_path / "out2").exists()

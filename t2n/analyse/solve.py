"""Choose one method (or float) per unit, minimising the summed loss estimates under a budget:
an exact mixed-integer linear program (scipy.optimize.milp, HiGHS), whose answer is checked
again for feasibility before it is returned.

Variables x[u, c] in {0, 1} for every unit u and available choice c (float included);
constraints: sum_c x[u, c] = 1 for each u, and sum cost[u, c] x[u, c] <= budget; objective:
sum estimate[u, c] x[u, c]. Estimates of float are 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from t2n.errors import OptionError

__all__ = ["Problem", "solve", "budgets"]

FLOAT = "float"


@dataclass
class Problem:
    """``choices[u]``: the labels available to unit ``u`` (float first); ``estimate[(u, c)]``
    and ``cost[(u, c)]`` for each; ``fixed``: the cost outside the units (added to every
    configuration, so budgets are the whole model's)."""
    units: list
    choices: dict
    estimate: dict
    cost: dict
    fixed: float = 0.0

    def total_cost(self, config: dict) -> float:
        return self.fixed + sum(self.cost[(u, config[u])] for u in self.units)

    def objective(self, config: dict) -> float:
        return sum(self.estimate[(u, config[u])] for u in self.units)

    def extreme(self, cheapest: bool) -> float:
        pick = min if cheapest else max
        return self.fixed + sum(pick(self.cost[(u, c)] for c in self.choices[u])
                                for u in self.units)


def solve(problem: Problem, budget: float) -> dict | None:
    """``{unit: label}`` of least summed estimate with total cost <= budget; None when no
    configuration fits."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    index = [(u, c) for u in problem.units for c in problem.choices[u]]
    n = len(index)
    est = np.array([problem.estimate[k] for k in index], dtype=np.float64)
    # losses of 1e-7 are common: scaled to a maximum of 1, so that the solver's absolute
    # optimality gap cannot swallow the differences between choices
    est = est / max(float(np.abs(est).max()), 1e-300)
    cost = np.array([problem.cost[k] for k in index], dtype=np.float64)
    if problem.extreme(cheapest=True) > budget * (1 + 1e-12):
        return None
    rows = np.zeros((len(problem.units), n))
    pos = {u: i for i, u in enumerate(problem.units)}
    for j, (u, _) in enumerate(index):
        rows[pos[u], j] = 1.0
    # costs in units of the budget, so the solver's tolerances are relative
    scale = max(1.0, abs(budget - problem.fixed))
    constraints = [LinearConstraint(rows, 1, 1),
                   LinearConstraint(cost[None, :] / scale, -np.inf,
                                    (budget - problem.fixed) / scale)]
    res = milp(est, constraints=constraints, integrality=np.ones(n), bounds=Bounds(0, 1),
               options={"mip_rel_gap": 0.0})
    if res.x is None:
        return None
    config = {}
    for j, (u, c) in enumerate(index):
        if res.x[j] > 0.5:
            if u in config:
                raise OptionError(f"the solver chose two methods for {u}", "report it")
            config[u] = c
    if len(config) != len(problem.units):
        raise OptionError("the solver left a unit without a choice", "report it")
    # its answer, checked again exactly: the tolerance of the solver must not break the budget
    if problem.total_cost(config) > budget:
        return _repair(problem, config, budget)
    return config


def _repair(problem: Problem, config: dict, budget: float) -> dict | None:
    """Cheapest-loss swaps to bring a configuration a hair over the budget back under it."""
    config = dict(config)
    while problem.total_cost(config) > budget:
        best = None
        for u in problem.units:
            cur = config[u]
            for c in problem.choices[u]:
                saved = problem.cost[(u, cur)] - problem.cost[(u, c)]
                if saved > 0:
                    extra = problem.estimate[(u, c)] - problem.estimate[(u, cur)]
                    key = extra / saved
                    if best is None or key < best[0]:
                        best = (key, u, c)
        if best is None:
            return None
        config[best[1]] = best[2]
    return config


def budgets(problem: Problem, minimum: float | None, maximum: float | None, num: int,
            values=None) -> list[float]:
    """The budgets of a sweep: ``values`` as given, else ``num`` evenly spaced from ``minimum``
    (default: the cheapest configuration) to ``maximum`` (default: the dearest)."""
    if values:
        return sorted(float(v) for v in values)
    lo = problem.extreme(cheapest=True) if minimum is None else float(minimum)
    hi = problem.extreme(cheapest=False) if maximum is None else float(maximum)
    if num < 1:
        raise OptionError(f"--num-configs {num}", "give 1 or more")
    if hi < lo:
        raise OptionError(f"the budget range is empty ({lo:g} > {hi:g})",
                          "give --min below --max")
    if num == 1:
        return [hi]
    return [float(v) for v in np.linspace(lo, hi, num)]

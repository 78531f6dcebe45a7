"""``t2n analyse``: automatic mixed precision. For every block one method of a bag (or float),
chosen exactly under a size or MACs budget from per-block loss estimates; a sweep of budgets,
the real loss of each configuration, and configurations ``t2n export --mixed-config`` applies."""
from t2n.analyse.bag import Bag, Method
from t2n.analyse.config import MixedConfig
from t2n.analyse.run import Analyser, Result, Results

__all__ = ["Analyser", "Bag", "Method", "MixedConfig", "Result", "Results"]

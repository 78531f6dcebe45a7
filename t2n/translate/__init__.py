"""ATen -> NNEF translation: the registry, the graph walker, and one module per op family."""
from t2n.translate import families  # noqa: F401  (registers the built-in translators)
from t2n.translate.context import Ctx, Options, Value
from t2n.translate.engine import missing_ops, translate
from t2n.translate.registry import TRANSLATORS, translates

__all__ = ["translate", "translates", "missing_ops", "TRANSLATORS", "Ctx", "Options", "Value"]

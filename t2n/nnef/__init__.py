"""Torch-free model of an NNEF graph and its writers (graph.nnef text, .dat tensors, bundles)."""
from t2n.nnef.graph import Dim, Graph, Input, Operation, Ref, Variable

__all__ = ["Dim", "Graph", "Input", "Operation", "Ref", "Variable"]

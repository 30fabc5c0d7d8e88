"""MoSA: Mixture of Sparse Adapters (disjoint sparse modules, sparse training, consistency loss, merge)."""

from pointpeft.peft.base import register_method
from pointpeft.peft.mosa.config import MosaConfig
from pointpeft.peft.mosa.layers import TENSORS, SparseAdapter
from pointpeft.peft.mosa.method import Mosa, sparse_adapters, symmetric_kl

__all__ = ["TENSORS", "Mosa", "MosaConfig", "SparseAdapter", "sparse_adapters", "symmetric_kl"]

register_method(Mosa)

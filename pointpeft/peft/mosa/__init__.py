"""MoSA: Mixture of Sparse Adapters (expert-split adapters, sparse training, consistency loss, merge)."""

from pointpeft.peft.base import register_method
from pointpeft.peft.mosa.config import MosaConfig
from pointpeft.peft.mosa.experts import ExpertLinear, MergedAdapter, MosaAdapter, balanced_partition
from pointpeft.peft.mosa.layers import TENSORS, SparseAdapter
from pointpeft.peft.mosa.method import Mosa, merge_experts, mosa_adapters, sparse_adapters, symmetric_kl

__all__ = ["TENSORS", "ExpertLinear", "MergedAdapter", "Mosa", "MosaAdapter", "MosaConfig", "SparseAdapter",
           "balanced_partition", "merge_experts", "mosa_adapters", "sparse_adapters", "symmetric_kl"]

register_method(Mosa)

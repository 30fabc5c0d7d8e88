"""PointGST: Point cloud Graph Spectral Tuning (spectral adapters over the patch centres' graph)."""

from pointpeft.peft.base import register_method
from pointpeft.peft.pointgst.config import TRANSFORMS, PointGSTConfig
from pointpeft.peft.pointgst.layers import SpectralAdapter, SpectralBases, SpectralBasisCache
from pointpeft.peft.pointgst.method import PointGST

__all__ = ["TRANSFORMS", "PointGST", "PointGSTConfig", "SpectralAdapter", "SpectralBasisCache", "SpectralBases"]

register_method(PointGST)

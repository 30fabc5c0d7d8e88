"""Point operations: farthest point sampling, k-nearest neighbours, Chamfer distance.

Each op has a pure-PyTorch reference that runs anywhere, and uses a faster backend (``fpsample`` on CPU,
``pointnet2_ops`` on CUDA) when importable, chosen by one ``backend=`` switch (``"auto"`` by default).
"""

from pointpeft.ops.fps import farthest_point_sample, gather_points
from pointpeft.ops.knn import knn_query

__all__ = ["farthest_point_sample", "gather_points", "knn_query"]

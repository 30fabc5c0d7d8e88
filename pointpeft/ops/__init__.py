"""Point operations: farthest point sampling, k-nearest neighbours, Chamfer distance.

Each op has a pure-PyTorch reference that runs anywhere and uses a faster backend when importable (``numba`` /
``fpsample`` on CPU, ``pointnet2_ops`` / the ``chamfer`` extension on CUDA), chosen by one ``backend=`` switch
(``"auto"`` by default).
"""

from pointpeft.ops.chamfer import (
    CHAMFER_BACKENDS,
    chamfer_distance,
    chamfer_l1,
    chamfer_l2,
    nearest_neighbours,
)
from pointpeft.ops.fps import (
    FPS_BACKENDS,
    available_fps_backends,
    farthest_point_sample,
    fps_torch,
    gather_points,
    resolve_fps_backend,
)
from pointpeft.ops.knn import knn_query, pairwise_distance

__all__ = [
    "CHAMFER_BACKENDS",
    "FPS_BACKENDS",
    "available_fps_backends",
    "chamfer_distance",
    "chamfer_l1",
    "chamfer_l2",
    "farthest_point_sample",
    "fps_torch",
    "gather_points",
    "knn_query",
    "nearest_neighbours",
    "pairwise_distance",
    "resolve_fps_backend",
]

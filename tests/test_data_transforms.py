"""Augmentations: ranges, shapes, reproducibility, config building, and the vote helper."""

from __future__ import annotations

import math

import pytest
import torch

from pointpeft.data import VoteAugmentation, build_transform, build_transforms
from pointpeft.data.transforms import Compose, RotateUp
from pointpeft.errors import ConfigError


@pytest.fixture
def cloud() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(256, 3, generator=g) * 2 - 1


def test_scale_translate_matches_point_mae_ranges(cloud: torch.Tensor) -> None:
    t = build_transform({"type": "scale_translate"})
    batch = cloud.expand(64, -1, -1)
    out = t(batch, torch.Generator().manual_seed(1))
    # out = x * s + b per cloud and axis: recover s and b from two points
    s = (out[:, 1] - out[:, 0]) / (cloud[1] - cloud[0])
    b = out[:, 0] - cloud[0] * s
    assert torch.allclose(out, batch * s[:, None] + b[:, None], atol=1e-5)
    assert s.min() >= 2 / 3 - 1e-5 and s.max() <= 1.5 + 1e-5 and b.abs().max() <= 0.2 + 1e-5
    assert s.std(0).min() > 0.1  # each cloud and axis draws its own scale
    assert not torch.equal(cloud, t(cloud))  # global RNG path works too


def test_rotate_up_keeps_up_coordinate_and_norms(cloud: torch.Tensor) -> None:
    for axis, idx in (("y", 1), ("z", 2), (0, 0)):
        t = build_transform({"type": "rotate_up", "axis": axis})
        out = t(cloud, torch.Generator().manual_seed(3))
        assert torch.allclose(out[:, idx], cloud[:, idx])
        assert torch.allclose(out.norm(dim=1), cloud.norm(dim=1), atol=1e-5)
        assert not torch.allclose(out, cloud, atol=1e-3)
    # Point-MAE's y rotation: points @ [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    rot = RotateUp("y").matrices((), torch.Generator().manual_seed(0), cloud)
    theta = math.atan2(rot[0, 2].item(), rot[0, 0].item())
    c, s = math.cos(theta), math.sin(theta)
    assert torch.allclose(rot, torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]]), atol=1e-6)
    assert abs(torch.det(rot).item() - 1) < 1e-5
    # normals turn with the points; extra columns stay
    pts6 = torch.cat([cloud, cloud / cloud.norm(dim=1, keepdim=True)], dim=1)
    out6 = RotateUp("y")(pts6, torch.Generator().manual_seed(4))
    assert torch.allclose(out6[:, 3:] * cloud.norm(dim=1, keepdim=True), out6[:, :3], atol=1e-5)
    small = build_transform({"type": "rotate_up", "axis": "z", "max_degrees": 10})
    r = small.matrices((1000,), torch.Generator().manual_seed(0), cloud)
    assert torch.atan2(r[:, 0, 1], r[:, 0, 0]).abs().max() <= math.radians(10) + 1e-5
    with pytest.raises(ConfigError, match="axis"):
        build_transform({"type": "rotate_up", "axis": "w"})


def test_jitter_dropout_scale_shuffle(cloud: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(0)
    jit = build_transform({"type": "jitter", "sigma": 0.5, "clip": 0.05})(cloud, g)
    assert (jit - cloud).abs().max() <= 0.05 + 1e-6 and (jit != cloud).all()
    drop = build_transform({"type": "random_point_dropout", "max_dropout_ratio": 0.8})
    out = drop(cloud.expand(16, -1, -1), g)
    replaced = (out == cloud[0]).all(-1).sum(1) - 1
    assert out.shape == (16, 256, 3) and replaced.max() > 10 and replaced.float().mean() < 0.8 * 256
    sc = build_transform({"type": "scale", "low": 0.5, "high": 2.0})(cloud, g)
    ratio = sc / cloud
    assert torch.allclose(ratio, ratio[0, 0].expand_as(ratio), atol=1e-4)
    sh = build_transform("shuffle_points")(cloud, g)
    assert not torch.equal(sh, cloud) and torch.equal(sh.sort(0).values, cloud.sort(0).values)


def test_transforms_do_not_modify_input_and_are_reproducible(cloud: torch.Tensor) -> None:
    t = build_transforms([{"type": "scale_translate"}, {"type": "rotate_up"}, {"type": "jitter"},
                          {"type": "random_point_dropout"}, {"type": "shuffle_points"}])
    assert isinstance(t, Compose) and len(t) == 5
    before = cloud.clone()
    a = t(cloud, torch.Generator().manual_seed(7))
    b = t(cloud, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(cloud, before)
    torch.manual_seed(0)
    c = t(cloud)
    torch.manual_seed(0)
    assert torch.equal(c, t(cloud))


def test_build_transforms_config_errors() -> None:
    assert build_transforms(None) is None and build_transforms([]) is None
    nested = build_transforms([{"type": "compose", "transforms": [{"type": "scale"}, {"type": "translate"}]}])
    assert isinstance(nested, Compose) and len(nested) == 2
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sigmaa'\]"):
        build_transforms([{"type": "jitter", "sigmaa": 0.1}])
    with pytest.raises(ConfigError, match="unknown transform 'flip'"):
        build_transforms([{"type": "flip"}])
    with pytest.raises(ConfigError, match="scale_low"):
        build_transform({"type": "scale_translate", "scale_low": 2, "scale_high": 1})
    with pytest.raises(ConfigError, match="C>=3"):
        build_transform("scale")(torch.zeros(5, 2))


def test_vote_augmentation(cloud: torch.Tensor) -> None:
    batch = cloud.expand(4, -1, -1).contiguous()
    vote = VoteAugmentation(num_votes=5, npoints=128, include_identity=True)
    views = list(vote.views(batch, torch.Generator().manual_seed(0)))
    assert len(views) == 5 and all(v.shape == (4, 128, 3) for v in views)
    assert torch.equal(views[0], batch[:, :128])
    assert not torch.equal(views[1], views[2])

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x[..., 0].mean(1), x[..., 1].mean(1), x[..., 2].mean(1)], dim=1)

    probs = VoteAugmentation(num_votes=3).predict(Probe(), batch, torch.Generator().manual_seed(0))
    assert probs.shape == (4, 3) and torch.allclose(probs.sum(1), torch.ones(4))
    single = list(VoteAugmentation(num_votes=2, transforms=None).views(cloud))
    assert all(torch.equal(v, cloud) for v in single)
    with pytest.raises(ConfigError, match="npoints=512"):
        list(VoteAugmentation(npoints=512).views(cloud))

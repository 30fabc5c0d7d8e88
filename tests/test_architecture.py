"""The package layering of docs/architecture.md, read from the source with ``ast`` (lazy imports inside functions
included), and the two contracts that keep the layers apart: a backbone family is one registration in ``models``,
and what a PEFT method records at evaluation reaches results.json and TensorBoard without the engine naming it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from peft_cases import NUM_CLASSES, tiny_point
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "pointpeft"

BASE = {"errors", "registry", "config", "recipes", "utils"}
#: what each package of the library may import from the library (besides itself); docs/architecture.md
ALLOWED: dict[str, set[str]] = {
    **{name: BASE for name in BASE},
    "ops": BASE,
    "data": BASE | {"ops"},
    "models": BASE | {"ops"},
    "peft": BASE | {"ops", "models"},
    "engine": BASE | {"ops", "data", "models", "peft"},
    "fewshot": BASE | {"ops", "data", "models", "peft", "engine"},
    "viz": BASE | {"ops", "data", "models", "peft"},
}  # pointpeft/__init__.py and pointpeft/cli.py (the console commands) may import any package
OUTSIDE = ("tools", "scripts", "benchmarks", "tests")  # never imported by the library


def _package(path: Path) -> tuple[str, list[str]]:
    """(first package under pointpeft, dotted module parts) of a library file."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return (parts[1] if len(parts) > 1 else ""), parts


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, at any depth (function bodies included)."""
    _, parts = _package(path)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts if is_pkg else parts[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            if mod == "pointpeft" and all(a.name == "__version__" for a in node.names):
                out[-1] = (node.lineno, "pointpeft.__version__")  # metadata, not the layers the top package imports
            elif mod == "pointpeft":  # ``from pointpeft import peft`` names a package
                out += [(node.lineno, f"pointpeft.{a.name}") for a in node.names if (LIB / a.name).exists()]
    return out


def _library_files() -> list[Path]:
    return sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


def layering_violations(files: list[Path]) -> list[str]:
    bad = []
    for path in files:
        pkg, _ = _package(path)
        allowed = ALLOWED.get(pkg)
        for line, mod in _imports(path):
            top = mod.split(".")
            where = f"{path.relative_to(REPO)}:{line} imports {mod}"
            if top[0] in OUTSIDE:
                bad.append(f"{where} (the library never imports {top[0]}/)")
            elif top[0] == "pointpeft" and allowed is not None and len(top) > 1 and top[1] != pkg \
                    and top[1] not in allowed | {"__version__"}:
                bad.append(f"{where} ({pkg} may import {sorted(allowed)})")
            elif top == ["pointpeft"] and allowed is not None and pkg in {"ops", "models", "data", "peft", *BASE}:
                bad.append(f"{where} (the top package imports every layer; import the module itself)")
    return bad


def test_the_library_follows_the_import_directions() -> None:
    bad = layering_violations(_library_files())
    assert not bad, "\n".join(bad)


def test_the_engine_imports_no_method_by_name() -> None:
    """The engine reads ``pointpeft.peft`` (the contract and its API), never a method's package."""
    methods = {p.name for p in (LIB / "peft").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    bad = [f"{path.relative_to(REPO)}:{line} imports {mod}"
           for path in sorted((LIB / "engine").rglob("*.py")) for line, mod in _imports(path)
           if mod.startswith("pointpeft.peft.") and mod.split(".")[2] in methods]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("pkg", "source", "why"), [
    ("models", "from pointpeft.peft import get_peft_model\n", "models may import"),
    ("ops", "def f():\n    from pointpeft.models import build_vit\n", "ops may import"),  # a lazy import
    ("data", "import tools.train\n", "never imports tools/"),
    ("models", "from ..peft.base import PeftMethod\n", "models may import"),  # a relative one
])
def test_the_layering_check_catches_each_kind_of_edge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pkg: str,
                                                      source: str, why: str) -> None:
    fake_repo = tmp_path / "repo"
    path = fake_repo / "pointpeft" / pkg / "bad.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    monkeypatch.setitem(globals(), "REPO", fake_repo)
    bad = layering_violations([path])
    assert len(bad) == 1 and why in bad[0], bad


# -- a third backbone family: one registration in models, nothing in peft ------------------------------------------

class ToyBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, _, v = self.attn.qkv(self.norm1(x)).chunk(3, -1)
        x = x + self.attn.proj(torch.softmax(q @ q.transpose(1, 2), -1) @ v)
        return x + self.mlp.fc2(torch.relu(self.mlp.fc1(self.norm2(x))))


class ToyTransformer(nn.Module):
    """A backbone pointpeft has never seen: tokens in, logits out."""

    def __init__(self, dim: int = 8, depth: int = 2, num_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.blocks = nn.ModuleList(ToyBlock(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def test_a_new_backbone_family_is_one_registration_in_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from pointpeft.models import backbone, describe_backbone, load_backbone_weights
    from pointpeft.peft import get_peft_model

    monkeypatch.setattr(backbone, "_DESCRIBERS", list(backbone._DESCRIBERS))  # the registration ends with the test
    loaded = []

    @backbone.register_backbone("toy", lambda m: isinstance(m, ToyTransformer))
    def _toy_spec(model: ToyTransformer) -> backbone.BackboneSpec:
        return backbone.BackboneSpec(model=model, family="toy", blocks=list(model.blocks), embed_dim=8, num_heads=1,
                                     head_modules=[model.head], prefix_params=[], final_norm=model.norm,
                                     load_weights=lambda m, p: loaded.append(p) or "report",
                                     tokenizer_modules=[model.embed])

    with pytest.raises(ValueError, match="already registered"):
        backbone.register_backbone("toy", lambda m: False)(_toy_spec)
    model = ToyTransformer()
    assert describe_backbone(model).family == "toy"
    assert load_backbone_weights(model, "w.pth") == "report" and loaded == ["w.pth"]
    x = torch.randn(2, 5, 4)
    before = model.eval()(x).detach()
    peft = get_peft_model(model, {"type": "lora", "r": 2}).eval()
    torch.testing.assert_close(peft(x), before)  # LoRA's B starts at zero
    trainable = {n for n, p in peft.named_parameters() if p.requires_grad}
    assert any("lora" in n for n in trainable) and all("lora" in n or n.startswith("head.") for n in trainable)


def test_an_unknown_backbone_names_the_registered_families() -> None:
    from pointpeft.errors import ConfigError
    from pointpeft.models import describe_backbone

    with pytest.raises(ConfigError, match=r"point_transformer.*timm_vit"):
        describe_backbone(nn.Linear(2, 2))


# -- evaluation records: the method says what it records, the engine stores it -------------------------------------

def _evaluate(peft_config: dict) -> tuple[nn.Module, dict]:
    from pointpeft.engine.classification import ClassificationTask
    from pointpeft.peft import get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny_point(), peft_config)
    data = TensorDataset(torch.randn(6, 64, 3), torch.arange(6) % NUM_CLASSES)
    task = ClassificationTask({})
    task.evaluate(model, DataLoader(data, batch_size=3))
    return model, task.extras


@pytest.mark.parametrize("peft_config", [{"type": "adapterx"}, {"type": "adapter", "x_mode": True}])
def test_smoa_methods_record_expert_usage_at_evaluation(peft_config: dict) -> None:
    from pointpeft.engine.trainer_hooks import TensorBoardHook

    model, extras = _evaluate(peft_config)
    usage = torch.tensor(extras["expert_usage"])
    depth = len(model.blocks.blocks)
    assert usage.shape[0] == depth and torch.allclose(usage.sum(1), torch.ones(depth))  # one evaluation's counts
    assert len(extras["confusion_matrix"]) == NUM_CLASSES

    class Writer:
        scalars: dict[str, float] = {}

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.scalars[tag] = value

        def flush(self) -> None: ...

    hook = TensorBoardHook("unused", every=1)
    hook.writer = Writer()
    trainer = type("T", (), {"model": model, "task_extras": extras})()
    hook.after_epoch(trainer, {"epoch": 1, "val_acc": 50.0})
    assert hook.writer.scalars["epoch/val_acc"] == 50.0
    assert hook.writer.scalars["experts/block0/expert0"] == pytest.approx(float(usage[0, 0]))
    assert sum(k.startswith("experts/") for k in hook.writer.scalars) == usage.numel()


def test_methods_without_records_add_nothing() -> None:
    _, extras = _evaluate({"type": "lora"})
    assert set(extras) == {"confusion_matrix"}


# -- one text reader: the viewer's .txt/.xyz and ModelNet40's normal_resampled shapes -------------------------------

def test_one_text_reader_for_the_viewer_and_modelnet(tmp_path: Path) -> None:
    from pointpeft.data import modelnet40, point_files

    (tmp_path / "a.xyz").write_text("# x y z\n0 0 1\n\n1 2 3\n")
    (tmp_path / "b.txt").write_text("0,0,1,0,0,1\n1,2,3,0,1,0\n")
    xyz_points = point_files.read_cloud(tmp_path / "a.xyz").points
    assert xyz_points.tolist() == [[0, 0, 1], [1, 2, 3]]
    assert point_files.read_text_points(tmp_path / "b.txt", min_channels=6).shape == (2, 6)
    assert point_files.read_cloud(tmp_path / "b.txt").points.tolist() == xyz_points.tolist()
    assert modelnet40.read_text_points is point_files.read_text_points

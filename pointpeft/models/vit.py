"""timm Vision Transformers for the 2D experiments (VTAB-1k), built by name with weights from a LOCAL file.

Why a wrapper at all: the PEFT code injects into timm's own ``VisionTransformer`` (``pointpeft.models.backbone``), so
this module returns that class unchanged; what it adds is the config entry point (``{type: vit, name: ...}``),
tiny CPU test presets, and a loader that never touches the network and reports what it could not match:

* ``.npz`` — Google's JAX/Flax checkpoints (the original ViT / AugReg ``Transformer/encoderblock_{i}`` layout and
  big_vision's ``params/`` layout with scanned blocks), loaded by timm's own ``VisionTransformer.load_pretrained``;
* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` — a timm state dict (plain or under ``model`` / ``state_dict``), read with
  ``weights_only=True`` and passed through timm's ``checkpoint_filter_fn`` (position-embedding resampling, ...);
* ``.safetensors`` — the same, as written by timm / Hugging Face.

The classifier is dropped (kept as initialised, and reported) when the file was trained on another number of
classes; every other shape mismatch is a :class:`~pointpeft.errors.CheckpointError` naming file and tensor.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pointpeft.errors import CheckpointError, ConfigError, InputError
from pointpeft.models.backbone import BackboneSpec, register_backbone
from pointpeft.models.pretrained import LoadReport, extract_state_dict, group_keys, read_checkpoint
from pointpeft.registry import MODELS
from pointpeft.utils.misc import get_logger

log = get_logger("models.vit")

#: Local presets: (timm architecture, overrides). Tiny 32x32-input models keep CPU tests and digits runs cheap.
VIT_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # ViT-Ti width (192, 3 heads), 2 blocks, 8x8 patches on 32x32 inputs: 16 patches + CLS, ~0.9M parameters
    "vit_test_tiny": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}),
    # ViT-S width (384, 6 heads), 4 blocks, 8x8 patches on 32x32 inputs: ~7.1M parameters
    "vit_test_small": ("vit_small_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 4}),
}
#: timm modules whose models are ``VisionTransformer`` instances (subclasses included).
VIT_MODULES = ("vision_transformer", "vision_transformer_hybrid", "deit")
GLOBAL_POOLS = ("token", "avg", "max", "avgmax", "map", "")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
HEAD_PREFIX = "head."


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hub libraries offline while a model is built: pointpeft never downloads weights at run time."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _vit_init_params() -> set[str]:
    from timm.models.vision_transformer import VisionTransformer

    return {k for k in inspect.signature(VisionTransformer.__init__).parameters if k != "self"}


def _resolve_name(name: str) -> tuple[str, dict[str, Any]]:
    import timm

    if name in VIT_PRESETS:
        arch, kw = VIT_PRESETS[name]
        return arch, dict(kw)
    if not timm.is_model(name):
        known = sorted(VIT_PRESETS) + timm.list_models("vit_*")
        close = difflib.get_close_matches(name, known, n=5)
        raise ConfigError(f"model.name: unknown ViT {name!r}; close matches: {close or '(none)'}; any timm "
                          f"VisionTransformer name (timm.list_models('vit_*')) or a preset {sorted(VIT_PRESETS)}")
    from timm.models import is_model_in_modules

    if not is_model_in_modules(name, list(VIT_MODULES)):
        raise ConfigError(f"model.name: {name!r} is not a timm VisionTransformer (defined in timm's "
                          f"{list(VIT_MODULES)}); the PEFT injection supports VisionTransformer models")
    return name, {}


def build_vit(name: str = "vit_base_patch16_224", num_classes: int = 100, weights: str | os.PathLike | None = None,
              img_size: int | None = None, patch_size: int | None = None, depth: int | None = None,
              drop_rate: float = 0.0, drop_path_rate: float = 0.1, global_pool: str = "token",
              strict: bool = False, model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A timm ``VisionTransformer`` by name (``pretrained=False``), optionally loaded from a local ``weights`` file.

    ``img_size`` / ``patch_size`` / ``depth`` left as None keep the architecture's (or preset's) value;
    ``model_kwargs`` passes any other ``VisionTransformer`` argument (``qkv_bias``, ``class_token``, ...).
    ``strict=True`` raises when a backbone tensor is missing from the file or a file tensor is unused (the head
    may still differ in its class count). The load report is kept in ``model.load_report``.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(f"model.num_classes must be a non-negative integer, got {num_classes!r}")
    if global_pool not in GLOBAL_POOLS:
        raise ConfigError(f"model.global_pool must be one of {list(GLOBAL_POOLS)}, got {global_pool!r}")
    for key, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ConfigError(f"model.{key} must be in [0, 1), got {value!r}")
    arch, kwargs = _resolve_name(name)
    extra = dict(model_kwargs or {})
    allowed = _vit_init_params()
    bad = sorted(set(extra) - allowed)
    if bad:
        raise ConfigError(f"model.model_kwargs: unknown VisionTransformer argument(s) {bad}; allowed: "
                          f"{sorted(allowed)}")
    kwargs.update(extra)
    for key, value in (("img_size", img_size), ("patch_size", patch_size), ("depth", depth)):
        if value is not None:
            kwargs[key] = value
    kwargs.update(num_classes=num_classes, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                  global_pool=global_pool)
    with _offline():
        try:
            model = timm.create_model(arch, pretrained=False, **kwargs)
        except (TypeError, ValueError, AssertionError) as e:
            raise ConfigError(f"model: cannot build {name!r} with {kwargs}: {e}") from None
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"model.name: {name!r} builds a {type(model).__name__}, not a timm VisionTransformer "
                          "(the PEFT injection supports VisionTransformer)")
    model.arch_name = name
    model.load_report = None
    model.register_forward_pre_hook(_check_images_hook)
    if weights is not None and str(weights) != "":
        model.load_report = load_vit_weights(model, weights, strict=strict)
    return model


def check_images(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` as a (B, C, H, W) float batch in the model's dtype; InputError naming what is wrong otherwise.

    Why: timm reports a wrong size as a bare AssertionError, a wrong dtype deep inside the convolution, and a
    NaN not at all (the logits are just NaN).
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"images: expected a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"images: expected shape (B, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"images: expected a float tensor (normalised pixels), got dtype {x.dtype}")
    B, C, H, W = x.shape
    if B == 0:
        raise InputError("images: empty batch (B=0)")
    pe = model.patch_embed
    if C != pe.proj.in_channels:
        raise InputError(f"images: expected {pe.proj.in_channels} channels, got C={C} (shape {tuple(x.shape)})")
    size = getattr(pe, "img_size", None)
    if size is not None and getattr(pe, "strict_img_size", False) and (H, W) != tuple(size):
        raise InputError(f"images: expected H x W = {size[0]} x {size[1]} (the model's img_size), got {H} x {W}")
    bad = ~torch.isfinite(x).flatten(1).all(dim=1)
    if bad.any():
        raise InputError(f"images: NaN or inf in image {int(bad.nonzero()[0, 0])} of the batch "
                         f"({int(bad.sum())} bad image(s))")
    dtype = pe.proj.weight.dtype
    return x if x.dtype == dtype else x.to(dtype)


def _check_images_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if not args:
        return None
    x = check_images(args[0], module)
    return None if x is args[0] else (x, *args[1:])


MODELS.register("vit")(build_vit)  # the signature is the config schema: a misspelled key is a ConfigError


# ---------------------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------------------
def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        hint = ""
        if isinstance(path, str) and (path.startswith(("hf-hub:", "hf_hub:", "timm/")) or "://" in path):
            hint = " (pointpeft never downloads: give the path of a local .npz/.pth/.safetensors file)"
        raise CheckpointError(f"ViT weights not found: {p}{hint}")
    if not p.is_file():
        raise CheckpointError(f"ViT weights path is not a file: {p}")
    return p


def load_vit_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = False) -> LoadReport:
    """Load a local ``.npz`` / ``.pth`` / ``.safetensors`` file into a timm ViT; returns the LoadReport.

    Missing keys (in the model, not in the file), unexpected keys (in the file, unused) and a dropped head (the
    file's classifier has another class count: ``skipped_keys``) are logged and reported.
    """
    p = _check_path(path)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        keys = _npz_keys(p)
        if any(k.endswith("embedding/kernel") for k in keys):
            report = _load_npz(model, p, keys)
        else:  # a state dict saved with numpy under timm's own names
            report = _load_state(model, _read_npz_state(p), str(p), "npz_state_dict")
    elif suffix == ".safetensors":
        report = _load_state(model, _read_safetensors(p), str(p), "safetensors")
    elif suffix in TORCH_SUFFIXES:
        state, container = extract_state_dict(read_checkpoint(p), p)
        report = _load_state(model, state, str(p), f"torch_{container}")
    else:
        raise CheckpointError(f"{p}: unknown weights format {suffix!r}; expected .npz (JAX/big_vision), "
                              f".safetensors or a torch file ({', '.join(TORCH_SUFFIXES)})")
    _log_report(report)
    if strict and (report.missing_keys or report.unexpected_keys):
        body_missing = [k for k in report.missing_keys if not k.startswith(HEAD_PREFIX)]
        if body_missing or report.unexpected_keys:
            raise CheckpointError(f"{p}: strict loading failed: missing {body_missing[:5]} "
                                  f"({len(body_missing)}), unexpected {report.unexpected_keys[:5]} "
                                  f"({len(report.unexpected_keys)})")
    return report


def _npz_keys(p: Path) -> list[str]:
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{p}: not a readable .npz archive (corrupt or truncated?): {e}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{p}: holds a single array, not an .npz archive of named weights")
    with z:
        return list(z.files)


def _read_npz_state(p: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: torch.from_numpy(np.array(z[k])) for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, TypeError) as e:
        raise CheckpointError(f"{p}: cannot read the .npz arrays (corrupt, or object arrays?): {e}") from None


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{p}: not a readable safetensors file (corrupt or truncated?): {e}") from None


def _log_report(report: LoadReport) -> None:
    if report.missing_keys:
        log.info("missing_keys (in the model, not in %s):\n%s", report.path, group_keys(report.missing_keys))
    if report.unexpected_keys:
        log.info("unexpected_keys (in %s, not used by the model):\n%s", report.path,
                 group_keys(report.unexpected_keys))
    if report.skipped_keys:
        log.info("classifier of %s dropped (another class count): %s", report.path, report.skipped_keys)
    log.info("loaded %s", report.summary())


def _head_shapes_differ(model: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    sd = model.state_dict()
    return any(k in state and state[k].shape != sd[k].shape for k in sd if k.startswith(HEAD_PREFIX))


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str, fmt: str) -> LoadReport:
    """A state dict in timm names (after ``module.`` stripping and timm's checkpoint_filter_fn) into ``model``."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = {re.sub(r"^(module\.)+", "", k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    try:
        state = checkpoint_filter_fn(state, model)
    except (RuntimeError, ValueError, KeyError, IndexError) as e:
        raise CheckpointError(f"{path}: cannot adapt the checkpoint to {model.arch_name!r}: {e}") from None
    model_sd = model.state_dict()
    skipped: list[str] = []
    if _head_shapes_differ(model, state):
        skipped = sorted(k for k in state if k.startswith(HEAD_PREFIX))
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    common = [k for k in state if k in model_sd]
    if not common:
        raise CheckpointError(f"{path}: none of its {len(state)} tensors matches the model "
                              f"({getattr(model, 'arch_name', type(model).__name__)}); file keys look like "
                              f"{list(state)[:4]}, the model's like {list(model_sd)[:4]}")
    mismatched = [k for k in common if state[k].shape != model_sd[k].shape]
    if mismatched:
        details = "; ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(model_sd[k].shape)}"
                            for k in mismatched[:6])
        raise CheckpointError(f"{path}: shape mismatch for {len(mismatched)} tensor(s): {details} — weights of "
                              "another ViT size?")
    bad = [k for k in common if state[k].is_floating_point() and not torch.isfinite(state[k]).all()]
    if bad:
        raise CheckpointError(f"{path}: tensor(s) with NaN/inf values: {bad[:5]}")
    loadable = {k: state[k] for k in common}
    model.load_state_dict(loadable, strict=False)
    return LoadReport(path=path, source_format=fmt, missing_keys=[k for k in model_sd if k not in loadable],
                      unexpected_keys=[k for k in state if k not in model_sd], loaded_keys=common,
                      skipped_keys=skipped)


# -- JAX / big_vision .npz ---------------------------------------------------------------------------------------
#: npz key patterns (after the layout prefix) that timm's ``_load_weights`` reads for a plain or hybrid ViT.
_NPZ_READ = re.compile(
    r"^(embedding/(kernel|bias)|cls|pos_embedding|Transformer/posembed_input/pos_embedding"
    r"|Transformer/encoder_norm/(scale|bias)|MAPHead_0/.*|conv_root/kernel|gn_root/(scale|bias)"
    r"|block\d+/unit\d+/.*)$")
_NPZ_BLOCK = re.compile(r"^Transformer/encoderblock(?:_(\d+))?/")
_NPZ_PREFIXES = ("opt/target/", "params/img/", "params/")


def _npz_prefix(keys: list[str]) -> str:
    """The layout prefix, the way timm's loader picks it."""
    if "embedding/kernel" in keys:
        return ""
    for prefix in _NPZ_PREFIXES:
        if f"{prefix}embedding/kernel" in keys:
            return prefix
    return ""


def _npz_unused(keys: list[str], prefix: str, depth: int, head_loaded: bool) -> list[str]:
    unused = []
    for key in keys:
        if not key.startswith(prefix):
            unused.append(key)
            continue
        rest = key[len(prefix):]
        block = _NPZ_BLOCK.match(rest)
        if block:
            if block.group(1) is not None and int(block.group(1)) >= depth:
                unused.append(key)
            continue
        if rest.startswith("head/"):
            if not head_loaded:
                unused.append(key)
            continue
        if not _NPZ_READ.match(rest):
            unused.append(key)
    return unused


def _load_npz(model: nn.Module, p: Path, keys: list[str]) -> LoadReport:
    """timm's ``load_pretrained`` on the file; which model tensors it did not write is found with a NaN sentinel
    (every parameter is NaN-filled first; the ones still NaN afterwards are missing and get their values back)."""
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for prm in params.values():
            if prm.is_floating_point():
                prm.fill_(float("nan"))
    try:
        model.load_pretrained(str(p))
    except KeyError as e:
        model.load_state_dict(snapshot)
        key = str(e.args[0]).replace(" is not a file in the archive", "")
        raise CheckpointError(f"{p}: the JAX checkpoint lacks {key!r} that a {model.arch_name!r} "
                              f"({len(model.blocks)} blocks) needs — weights of another architecture?") from None
    except (RuntimeError, ValueError, OSError, EOFError, zipfile.BadZipFile, IndexError) as e:
        model.load_state_dict(snapshot)
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p}: cannot load this JAX .npz into {model.arch_name!r}: {msg} — weights of "
                              "another ViT size, or a corrupt file?") from None
    missing, partial = [], []
    with torch.no_grad():
        for name, prm in params.items():
            if not prm.is_floating_point():
                continue
            nan = torch.isnan(prm)
            if nan.all():
                missing.append(name)
                prm.copy_(snapshot[name])
            elif nan.any() or not torch.isfinite(prm).all():
                partial.append(name)
    if partial:
        model.load_state_dict(snapshot)
        raise CheckpointError(f"{p}: NaN/inf values loaded into {partial[:5]} — a corrupt checkpoint?")
    head_loaded = not any(name.startswith(HEAD_PREFIX) for name in missing)
    prefix = _npz_prefix(keys)
    skipped = [] if head_loaded else [k for k in keys if k.startswith(f"{prefix}head/")]
    unused = [k for k in _npz_unused(keys, prefix, len(model.blocks), head_loaded) if k not in skipped]
    loaded = [k for k in params if k not in missing]
    fmt = "big_vision_npz" if prefix.startswith("params/") or f"{prefix}pos_embedding" in keys else "jax_npz"
    return LoadReport(path=str(p), source_format=fmt, missing_keys=missing, unexpected_keys=unused,
                      loaded_keys=loaded, skipped_keys=skipped)


def _is_timm_vit(model: nn.Module) -> bool:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(model, VisionTransformer)


@register_backbone("timm_vit", _is_timm_vit)
def timm_vit_spec(model: nn.Module) -> BackboneSpec:
    """timm ``VisionTransformer`` (subclasses included): local weight files through :func:`load_vit_weights`."""
    heads: list[nn.Module | nn.Parameter] = [model.head]
    if not isinstance(model.fc_norm, nn.Identity):
        heads.append(model.fc_norm)
    prefix = [p for p in (getattr(model, "cls_token", None), getattr(model, "reg_token", None)) if p is not None]
    return BackboneSpec(
        model=model,
        family="timm_vit",
        blocks=list(model.blocks),
        embed_dim=model.embed_dim,
        num_heads=model.blocks[0].attn.num_heads,
        head_modules=heads,
        prefix_params=prefix,
        final_norm=model.norm,
        load_weights=load_vit_weights,
        tokenizer_modules=[model.patch_embed],
    )

"""Load official Point-MAE / Point-BERT / DAPT / IDPT checkpoints (and our own) into a point transformer.

Why one loader: every pretraining codebase stores its weights in its own layout. The layouts recognised, after a
leading ``module.`` (DataParallel) is dropped from every key:

=======================  ==================================================================================
``point_mae_pretrain``   ``{"base_model": {"MAE_encoder.{encoder,pos_embed,blocks,norm}...", "MAE_decoder...",
                         "mask_token", "decoder_pos_embed...", "increase_dim..."}}``: the encoder loads, the
                         decoder keys are unexpected, CLS and head are missing (pretraining has none)
``point_bert_pretrain``  ``{"base_model": {"transformer_q.*", "transformer_k.*", "dvae.*", ...}}``: the query
                         encoder (incl. CLS and ``reduce_dim``) loads; its MoCo ``cls_head``, the momentum
                         encoder ``transformer_k`` and the dVAE are unexpected
``finetune``             ``{"base_model": {model keys}}``: Point-MAE / DAPT / IDPT fine-tuned models; their extra
                         modules (adapters, prompts) are unexpected
``model`` / ``state_dict``  ``{"model": {...}}`` (our full training checkpoints) or ``{"state_dict": {...}}``
``plain``                a bare state dict
=======================  ==================================================================================

Files are read with ``torch.load(weights_only=True)``: a pickle that needs code to run is refused, never executed
(numpy scalars/arrays, found in some ``metrics`` entries, are allowed as data). Missing and unexpected keys are
logged grouped by module, like the originals' ``load_model_from_ckpt``, and returned in a :class:`LoadReport`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pointpeft.errors import CheckpointError
from pointpeft.utils.misc import get_logger
from pointpeft.utils.modules import unwrap

log = get_logger("models.pretrained")

#: Container keys holding a state dict, in the order they are tried.
STATE_DICT_KEYS = ("base_model", "model", "state_dict")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: the format it recognised and the keys it could not match."""

    path: str
    source_format: str
    missing_keys: list[str] = field(default_factory=list)  # in the model, not loaded from the file
    unexpected_keys: list[str] = field(default_factory=list)  # in the file, not used by the model
    loaded_keys: list[str] = field(default_factory=list)
    skipped_keys: list[str] = field(default_factory=list)  # head tensors left as they were (skip_head=True)

    def summary(self) -> str:
        return (f"{self.path} [{self.source_format}]: loaded {len(self.loaded_keys)}, "
                f"missing {len(self.missing_keys)}, unexpected {len(self.unexpected_keys)}, "
                f"head skipped {len(self.skipped_keys)}")


# ---------------------------------------------------------------------------------------------------------------
# reading the file
# ---------------------------------------------------------------------------------------------------------------
def _numpy_safe_globals() -> list[Any]:
    """numpy scalar / array / dtype reconstructors: plain data, allowed alongside tensors."""
    core = getattr(np, "_core", None) or np.core
    out: list[Any] = [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return out


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {p}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises KeyError / RuntimeError / EOFError / UnpicklingError ... on bad files
        msg = str(e)
        if "Weights only load failed" in msg:
            # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module x is blocked"
            m = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", msg, re.IGNORECASE)
            what = f"it references {m.group(1)}" if m else msg.splitlines()[-1].strip()[:200]
            raise CheckpointError(
                f"{p}: refused to load a pickle that needs arbitrary code ({what}); torch.load ran with "
                "weights_only=True and executed nothing. If you trust the file, re-save its state dict: "
                "torch.save({'model': model.state_dict()}, path)") from e
        first = msg.strip().splitlines()[0][:200] if msg.strip() else "no message"
        raise CheckpointError(
            f"{p}: not a readable PyTorch checkpoint (corrupt, truncated or another kind of file): "
            f"{type(e).__name__}: {first}") from e


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(k, str) for k in obj) and any(
        isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Any, path: str | os.PathLike = "<checkpoint>") -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, container) from a loaded checkpoint: ``base_model`` / ``model`` / ``state_dict`` / ``plain``.

    Non-tensor entries of the state dict are dropped. CheckpointError naming ``path`` when none is found.
    """
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return {k: v for k, v in obj[key].items() if isinstance(v, torch.Tensor)}, key
        if _is_state_dict(obj):
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, "plain"
        top = sorted(map(str, obj.keys()))[:12]
        raise CheckpointError(
            f"{path}: no recognisable state dict: top-level keys {top}; expected one of {list(STATE_DICT_KEYS)} "
            "holding tensors, or a plain dict of tensors")
    raise CheckpointError(f"{path}: no recognisable state dict: the file holds a {type(obj).__name__}, not a dict")


# ---------------------------------------------------------------------------------------------------------------
# key layouts
# ---------------------------------------------------------------------------------------------------------------
def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _map_point_mae_pretrain(key: str) -> str:
    return key[len("MAE_encoder."):] if key.startswith("MAE_encoder.") else key


def _map_point_bert_pretrain(key: str) -> str:
    # the query encoder is the one fine-tuned; its MoCo projection ``cls_head`` is not a classifier
    if key.startswith("transformer_q.") and not key.startswith("transformer_q.cls_head."):
        return key[len("transformer_q."):]
    return key


def _map_base_model(key: str) -> str:
    return key[len("base_model."):] if key.startswith("base_model.") else key


#: (format name or None = named after the container, test on the ``module.``-stripped keys, key mapping);
#: the first layout whose test passes maps the keys.
LAYOUTS: list[tuple[str | None, Callable[[list[str]], bool], Callable[[str], str]]] = [
    ("point_bert_pretrain", lambda ks: any(k.startswith("transformer_q.") for k in ks), _map_point_bert_pretrain),
    ("point_mae_pretrain", lambda ks: any(k.startswith("MAE_encoder.") for k in ks), _map_point_mae_pretrain),
    (None, lambda ks: any(k.startswith("base_model.") for k in ks), _map_base_model),
]
_CONTAINER_FORMAT = {"base_model": "finetune", "model": "model", "state_dict": "state_dict", "plain": "plain"}


def convert_state_dict(state: Mapping[str, torch.Tensor], container: str = "plain"
                       ) -> tuple[dict[str, torch.Tensor], str]:
    """Map an official layout's keys to ours: (converted state dict, source format name)."""
    stripped = {_strip_module(k): v for k, v in state.items()}
    fmt = _CONTAINER_FORMAT.get(container, container)
    keys = list(stripped)
    for name, test, mapper in LAYOUTS:
        if test(keys):
            return {mapper(k): v for k, v in stripped.items()}, name or fmt
    return stripped, fmt


# ---------------------------------------------------------------------------------------------------------------
# loading into a model
# ---------------------------------------------------------------------------------------------------------------
def group_keys(keys: list[str]) -> str:
    """``blocks.0.attn.{proj.bias, qkv.weight}``-style lines, one per module (like fvcore's messages)."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        head, _, leaf = k.rpartition(".")
        groups.setdefault(head, []).append(leaf)
    lines = []
    for head, leaves in groups.items():
        inner = leaves[0] if len(leaves) == 1 else "{" + ", ".join(leaves) + "}"
        lines.append(f"  {head}.{inner}" if head else f"  {inner}")
    return "\n".join(lines)


def _head_prefix(model: nn.Module) -> str | None:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else getattr(model, "cls_head_finetune", None)
    if head is None:
        return None
    for name, m in model.named_modules():
        if m is head and name:
            return name + "."
    return None


def _fmt_shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _class_count_error(path: str, model: nn.Module, model_sd: Mapping[str, torch.Tensor],
                       ckpt: Mapping[str, torch.Tensor], head: str, mismatched: list[str]) -> CheckpointError | None:
    """CheckpointError when only the head's last layer differs, and only in its output (class) dimension."""
    num_classes = getattr(model, "num_classes", None)
    weights = [k for k in model_sd if k.startswith(head) and k.endswith(".weight") and model_sd[k].dim() == 2]
    if num_classes is None or not weights:
        return None
    last = weights[-1]
    last_mod = last[: -len("weight")]
    if model_sd[last].shape[0] != num_classes or not all(k.startswith(last_mod) for k in mismatched):
        return None
    if any(ckpt[k].shape[1:] != model_sd[k].shape[1:] for k in mismatched):
        return None
    c_ckpt = int(ckpt[mismatched[0]].shape[0])
    return CheckpointError(
        f"{path}: class-count mismatch: model has C={num_classes}, checkpoint has C={c_ckpt} "
        f"({last}: checkpoint {_fmt_shape(ckpt[last]) if last in ckpt else '?'} vs model "
        f"{_fmt_shape(model_sd[last])}); pass skip_head=True to keep the model's head, or build the model with "
        f"num_classes={c_ckpt}")


#: tensors of Point-MAE / Point-BERT pretraining checkpoints that a fine-tune model never has
PRETRAIN_ONLY_PREFIXES = ("MAE_decoder.", "increase_dim.", "mask_token", "decoder_pos_embed.", "lm_head.",
                          "cls_head.", "dvae.", "transformer_q.", "transformer_k.", "encoder_k.")


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, strict: bool = False,
                    skip_head: bool = False,
                    convert: Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
                    ) -> LoadReport:
    """Load the weights in ``path`` (any layout in this module's table) into ``model``; returns a LoadReport.

    ``skip_head=True`` leaves the classification head as it is (a checkpoint trained on another number of
    classes). ``strict=True`` raises unless every model key loads and every checkpoint key is used.
    ``convert(model, state)`` renames / reshapes the converted state before loading (a PEFT method's official
    tensors into its injected modules: ``pointpeft.peft.dapt.official_state``, ``pointpeft.peft.idpt.official_state``).
    Raises CheckpointError naming the file for a missing/corrupt/unsafe file, no state dict, a shape mismatch
    (key and both shapes), a checkpoint of another architecture, or a class-count mismatch in the head.
    """
    path_s = str(path)
    target = unwrap(model)
    raw = read_checkpoint(path)
    state, container = extract_state_dict(raw, path_s)
    ckpt, fmt = convert_state_dict(state, container)
    if convert is not None:
        ckpt = convert(target, ckpt)
    model_sd = target.state_dict()

    head = _head_prefix(target)
    skipped: list[str] = []
    skipped_head = bool(skip_head and head)
    if skipped_head:
        skipped = [k for k in ckpt if k.startswith(head)]
        ckpt = {k: v for k, v in ckpt.items() if not k.startswith(head)}

    common = [k for k in ckpt if k in model_sd]
    if not any(not k.endswith("num_batches_tracked") for k in common):
        raise CheckpointError(
            f"{path_s}: none of its {len(ckpt)} tensors matches a key of the model ({type(target).__name__}) — "
            f"a checkpoint of another architecture? checkpoint keys look like {list(ckpt)[:4]}, "
            f"the model's like {list(model_sd)[:4]} (recognised layout: {fmt})")

    mismatched = [k for k in common if ckpt[k].shape != model_sd[k].shape]
    if mismatched:
        head_mm = [k for k in mismatched if head is not None and k.startswith(head)]
        body_mm = [k for k in mismatched if k not in head_mm]
        if not body_mm:
            err = _class_count_error(path_s, target, model_sd, ckpt, head, head_mm)  # type: ignore[arg-type]
            if err is not None:
                raise err
        details = "; ".join(f"{k}: checkpoint {_fmt_shape(ckpt[k])} vs model {_fmt_shape(model_sd[k])}"
                            for k in (body_mm or head_mm)[:6])
        more = f" (+{len(mismatched) - 6} more)" if len(mismatched) > 6 else ""
        hint = (f" — a checkpoint of another architecture or width? ({len(common)} of its {len(ckpt)} tensors "
                f"share a name with the model's {len(model_sd)}; recognised layout: {fmt})" if body_mm
                else "; pass skip_head=True to keep the model's head")
        raise CheckpointError(f"{path_s}: shape mismatch for {len(mismatched)} tensor(s): {details}{more}{hint}")

    loadable = {k: ckpt[k] for k in common}
    missing = [k for k in model_sd if k not in loadable and not (skipped_head and k.startswith(head))]
    unexpected = [k for k in ckpt if k not in model_sd]
    if strict and (missing or unexpected):  # checked before anything is copied into the model
        raise CheckpointError(f"{path_s}: strict loading failed: {len(missing)} missing key(s) "
                              f"{missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}")
    target.load_state_dict(loadable, strict=False)
    report = LoadReport(path=path_s, source_format=fmt, missing_keys=missing, unexpected_keys=unexpected,
                        loaded_keys=list(loadable), skipped_keys=skipped)

    if missing:
        log.info("missing_keys (in the model, not in %s):\n%s", path_s, group_keys(missing))
    pretrain_only = [k for k in unexpected if k.startswith(PRETRAIN_ONLY_PREFIXES)]
    other = [k for k in unexpected if not k.startswith(PRETRAIN_ONLY_PREFIXES)]
    if pretrain_only:  # the MAE decoder of a pretraining checkpoint: never used by a classifier
        log.info("%d pretraining-only tensors unused (%s), as expected for a pretrain checkpoint", len(pretrain_only),
                 ", ".join(sorted({k.split(".")[0] for k in pretrain_only})))
    if other:
        log.info("unexpected_keys (in %s, not used by the model):\n%s", path_s, group_keys(other))
    if skipped_head:
        log.info("head %s left as is (skip_head=True); %d checkpoint tensors skipped", head.rstrip("."),
                 len(skipped))
    log.info("loaded %s", report.summary())
    return report

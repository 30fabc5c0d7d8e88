"""Write checkpoint files in the official layouts, from one of our models (weights random, names exact).

Each writer returns the state dict it stored under its container key, so tests can check key by key. The
backbone tensors are the model's own (``model.state_dict()``), so a model loaded from the file must give the same
logits as ``model``; the extra tensors (decoders, momentum encoder, dVAE, adapters) are random with the shapes the
official code gives them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

HEAD = "cls_head_finetune."


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape) * 0.02


def _backbone(model: nn.Module, with_cls: bool) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(HEAD)}
    if not with_cls:
        sd = {k: v for k, v in sd.items() if k not in ("cls_token", "cls_pos")}
    return sd


def _block_keys(prefix: str, dim: int, mlp_ratio: float = 4.0) -> dict[str, torch.Tensor]:
    hid = int(dim * mlp_ratio)
    return {
        f"{prefix}norm1.weight": torch.ones(dim), f"{prefix}norm1.bias": torch.zeros(dim),
        f"{prefix}attn.qkv.weight": _rand(3 * dim, dim),
        f"{prefix}attn.proj.weight": _rand(dim, dim), f"{prefix}attn.proj.bias": torch.zeros(dim),
        f"{prefix}norm2.weight": torch.ones(dim), f"{prefix}norm2.bias": torch.zeros(dim),
        f"{prefix}mlp.fc1.weight": _rand(hid, dim), f"{prefix}mlp.fc1.bias": torch.zeros(hid),
        f"{prefix}mlp.fc2.weight": _rand(dim, hid), f"{prefix}mlp.fc2.bias": torch.zeros(dim),
    }


def _save(path: str | os.PathLike, base_model: Mapping[str, torch.Tensor], dataparallel: bool,
          container: str | None = "base_model", **extra) -> dict[str, torch.Tensor]:
    sd = {("module." + k if dataparallel else k): v for k, v in base_model.items()}
    obj = sd if container is None else {container: sd, **extra}
    torch.save(obj, path)
    return sd


def point_mae_pretrain_state(model: nn.Module, decoder_depth: int = 4) -> dict[str, torch.Tensor]:
    """Point-MAE's ``Point_MAE`` (pretraining) state dict: MAE_encoder.* + decoder, mask token, increase_dim."""
    dim, group_size = model.trans_dim, model.cfg.group_size
    sd = {f"MAE_encoder.{k}": v for k, v in _backbone(model, with_cls=False).items()}
    sd["mask_token"] = _rand(1, 1, dim)
    sd.update({"decoder_pos_embed.0.weight": _rand(128, 3), "decoder_pos_embed.0.bias": torch.zeros(128),
               "decoder_pos_embed.2.weight": _rand(dim, 128), "decoder_pos_embed.2.bias": torch.zeros(dim)})
    for i in range(decoder_depth):
        sd.update(_block_keys(f"MAE_decoder.blocks.{i}.", dim))
    sd.update({"MAE_decoder.norm.weight": torch.ones(dim), "MAE_decoder.norm.bias": torch.zeros(dim),
               "increase_dim.0.weight": _rand(3 * group_size, dim, 1),
               "increase_dim.0.bias": torch.zeros(3 * group_size)})
    return sd


def write_point_mae_pretrain(model: nn.Module, path: str | os.PathLike, *, dataparallel: bool = True,
                             decoder_depth: int = 4) -> dict[str, torch.Tensor]:
    """Like Point-MAE's ``pretrain.pth``: ``{"base_model": {"module.MAE_encoder...": ...}, "optimizer": ..., ...}``."""
    sd = point_mae_pretrain_state(model, decoder_depth)
    return _save(path, sd, dataparallel, epoch=300, optimizer={"state": {}, "param_groups": []},
                 metrics={}, best_metrics={})


def point_bert_pretrain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Point-BERT's ``Point_BERT`` state dict: transformer_q (with CLS, reduce_dim), its MoCo cls_head and lm_head,
    the momentum encoder transformer_k, the dVAE (a few of its tensors) and the MoCo queue."""
    dim = model.trans_dim
    q = _backbone(model, with_cls=True)
    extra_q = {"mask_token": _rand(1, 1, dim), "lm_head.weight": _rand(8192, dim), "lm_head.bias": torch.zeros(8192),
               "cls_head.0.weight": _rand(256, dim * 2), "cls_head.0.bias": torch.zeros(256),
               "cls_head.2.weight": _rand(256, 256), "cls_head.2.bias": torch.zeros(256)}
    sd = {f"transformer_q.{k}": v for k, v in {**q, **extra_q}.items()}
    sd.update({f"transformer_k.{k}": (v + 0.01 if v.is_floating_point() else v.clone())
               for k, v in {**q, **extra_q}.items()})  # the momentum encoder: same names, other values
    sd.update({"dvae.encoder.first_conv.0.weight": _rand(128, 3, 1), "dvae.encoder.first_conv.0.bias": torch.zeros(128),
               "dvae.dgcnn_1.input_trans.weight": _rand(128, 256, 1), "dvae.codebook": _rand(8192, 256),
               "queue": _rand(256, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)})
    return sd


def write_point_bert_pretrain(model: nn.Module, path: str | os.PathLike, *, dataparallel: bool = True
                              ) -> dict[str, torch.Tensor]:
    """Like Point-BERT's ``Point-BERT.pth``: ``{"base_model": {"module.transformer_q...": ...}, ...}``."""
    return _save(path, point_bert_pretrain_state(model), dataparallel, epoch=300)


def dapt_extra_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """DAPT's additions to every block (names from DAPT's PointTransformer_DAPT): the dynamic adapter and the
    per-layer scale/shift (``tfts_gamma_*``/``tfts_beta_*``)."""
    dim, rank = model.trans_dim, 8
    sd: dict[str, torch.Tensor] = {"tfts_gamma_1": torch.ones(dim), "tfts_beta_1": torch.zeros(dim)}
    for i in range(len(model.blocks.blocks)):
        p = f"blocks.blocks.{i}."
        sd.update({
            f"{p}Adapter_MLP.adapter_layer_norm_before.weight": torch.ones(dim),
            f"{p}Adapter_MLP.adapter_layer_norm_before.bias": torch.zeros(dim),
            f"{p}Adapter_MLP.scale.weight": _rand(1, dim), f"{p}Adapter_MLP.scale.bias": torch.zeros(1),
            f"{p}Adapter_MLP.down_proj.weight": _rand(rank, dim), f"{p}Adapter_MLP.down_proj.bias": torch.zeros(rank),
            f"{p}Adapter_MLP.up_proj.weight": _rand(dim, rank), f"{p}Adapter_MLP.up_proj.bias": torch.zeros(dim),
            f"{p}tfts_gamma_1": torch.ones(dim), f"{p}tfts_beta_1": torch.zeros(dim),
            f"{p}attn.tfts_gamma_1": torch.ones(3 * dim), f"{p}attn.tfts_beta_1": torch.zeros(3 * dim),
        })
    return sd


def write_finetune(model: nn.Module, path: str | os.PathLike, *, extras: Mapping[str, torch.Tensor] | None = None,
                   dataparallel: bool = False, **top) -> dict[str, torch.Tensor]:
    """A Point-MAE / DAPT / IDPT fine-tuned checkpoint: ``{"base_model": model keys + extras, "epoch", ...}``."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd.update(extras or {})
    return _save(path, sd, dataparallel, epoch=299, metrics={"acc": torch.tensor(93.2)}, **top)


def write_state_dict(model: nn.Module, path: str | os.PathLike, key: str | None = "model",
                     dataparallel: bool = False) -> dict[str, torch.Tensor]:
    """``{"model": sd}`` (our training checkpoints), ``{"state_dict": sd}`` or, with key=None, a bare state dict."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    top = {"epoch": 3, "optimizer": {"state": {}, "param_groups": []}} if key else {}
    return _save(path, sd, dataparallel, container=key, **top)

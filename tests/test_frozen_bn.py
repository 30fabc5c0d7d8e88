"""Frozen BatchNorm during PEFT (``peft.frozen_bn``): ``train`` as the originals' ``base_model.train()`` (batch
statistics, running statistics update and travel with the adapter file) or ``eval`` (pretrained statistics kept)."""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
import torch
from peft_cases import build_backbone, eval_logits, make_batch, single_thread, train_steps  # noqa: F401
from safetensors.torch import load_file, save_file
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.peft import adapter_state_dict, get_peft_model, load_adapter, save_adapter

pytestmark = pytest.mark.usefixtures("single_thread")


def _tokenizer_bns(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {f"encoder.{n}": m for n, m in model.encoder.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def _peft(mode: str | None, method: str = "lora") -> nn.Module:
    cfg = {"type": method} if mode is None else {"type": method, "frozen_bn": mode}
    return get_peft_model(build_backbone("point"), cfg)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mode_decides_what_the_frozen_tokenizer_batchnorms_do(mode: str) -> None:
    model = _peft(mode)
    bns = _tokenizer_bns(model)
    assert bns and all(not any(p.requires_grad for p in m.parameters()) for m in bns.values())
    before = {n: m.running_mean.clone() for n, m in bns.items()}
    inputs, labels = make_batch("point")
    train_steps(model, inputs, labels, steps=1)
    model.train()
    assert all(m.training == (mode == "train") for m in bns.values())
    changed = [not torch.equal(m.running_mean, before[n]) for n, m in bns.items()]
    # train: statistics update although the frozen tokenizer runs under no_grad (nothing flows into it)
    assert all(changed) if mode == "train" else not any(changed)
    assert all(p.grad is None for p in model.encoder.parameters())
    copied = copy.deepcopy(model), pickle.loads(pickle.dumps(model))
    for clone in copied:
        clone.train()
        assert all(m.training == (mode == "train") for m in _tokenizer_bns(clone).values())


def test_default_is_the_originals_train_mode() -> None:
    assert _peft(None).peft_config.frozen_bn == "train"


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_statistics_travel_with_the_adapter_only_in_train_mode(mode: str, tmp_path) -> None:
    model = _peft(mode, "dapt")
    inputs, labels = make_batch("point")
    train_steps(model, inputs, labels, steps=2)
    keys = {f"{n}.{b}" for n, m in _tokenizer_bns(model).items() for b in ("running_mean", "running_var")}
    saved = set(adapter_state_dict(model))
    assert (keys <= saved) if mode == "train" else not (keys & saved)
    assert not {n for n, p in model.named_parameters() if not p.requires_grad} & saved  # still no frozen weight
    expected = eval_logits(model, inputs)
    save_adapter(model, tmp_path)
    fresh = build_backbone("point")
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(eval_logits(fresh, inputs), expected, rtol=0, atol=1e-6)
    for n, m in _tokenizer_bns(fresh).items():
        assert torch.equal(m.running_var, _tokenizer_bns(model)[n].running_var)


def test_an_adapter_without_statistics_loads_with_the_base_statistics(tmp_path, caplog) -> None:
    """Files written before frozen_bn existed were trained with the pretrained statistics: they load with those."""
    model = _peft("train")
    inputs, labels = make_batch("point")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
    save_adapter(model, tmp_path)
    path = tmp_path / "adapter.safetensors"
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith("encoder.")}
    save_file(tensors, str(path))
    fresh = build_backbone("point")
    with caplog.at_level(logging.WARNING):
        load_adapter(fresh, tmp_path)
    assert "no statistics of the frozen BatchNorms" in caplog.text
    torch.testing.assert_close(eval_logits(fresh, inputs), eval_logits(model, inputs), rtol=0, atol=1e-6)


def test_bad_mode_names_the_field() -> None:
    with pytest.raises(ConfigError, match="frozen_bn"):
        _peft("frozen")

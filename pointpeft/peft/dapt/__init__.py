"""DAPT: Dynamic Adapter meets Prompt Tuning (dynamic adapter, SSF, internal prompts); ``x_mode`` gives DAPT-X."""

from pointpeft.peft.base import register_method
from pointpeft.peft.dapt.config import DaptConfig
from pointpeft.peft.dapt.layers import DynamicAdapter, Ssf
from pointpeft.peft.dapt.method import SSF_TARGETS, Dapt, attach_ssf

__all__ = ["SSF_TARGETS", "Dapt", "DaptConfig", "DynamicAdapter", "Ssf", "attach_ssf"]

register_method(Dapt)

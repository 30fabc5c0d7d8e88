"""MHR / Poly: multi-head routing over inventories of LoRA adapters, with the few-shot adaptation API."""

from pointpeft.peft.base import register_method
from pointpeft.peft.mhr.config import MODES, MhrConfig
from pointpeft.peft.mhr.layers import RoutedLora
from pointpeft.peft.mhr.method import (
    Mhr,
    add_task,
    average_inventory,
    get_task,
    mhr_layers,
    routing_weights,
    set_task,
    to_mode,
)

__all__ = ["MODES", "Mhr", "MhrConfig", "RoutedLora", "add_task", "average_inventory", "get_task", "mhr_layers",
           "routing_weights", "set_task", "to_mode"]

register_method(Mhr)

"""GAPrompt: point prompts, a point shift prompter, token prompts with the shape code, prompt propagation and
adapters (Ai et al., ICML 2025); point transformers only."""

from pointpeft.peft.base import register_method
from pointpeft.peft.gaprompt.config import GAPromptConfig
from pointpeft.peft.gaprompt.layers import GAPromptAdapter, GAPromptState, propagate_prompts
from pointpeft.peft.gaprompt.method import GAPrompt

__all__ = ["GAPrompt", "GAPromptAdapter", "GAPromptConfig", "GAPromptState", "propagate_prompts"]

register_method(GAPrompt)

"""The one layer that knows open_clip's internals. Methods attach to it through extension points."""
from .load import LoadedCLIP, WeightsUnavailableError, load_clip, resolve_checkpoint, weights_fingerprint
from .lora import LoRA
from .model import CLIPBackbone, format_trainable_report, trainable_parameter_report
from .tokens import AFTER_FIRST, EMBED, END, CallableTokens, StaticTokens, TokenInjection
from .towers import ADAPTER_SITES, LORA_TARGETS, AttentionBias, CallableBias, TextTower, TowerOutput, VisionTower

__all__ = [
    "ADAPTER_SITES", "AFTER_FIRST", "AttentionBias", "CLIPBackbone", "CallableBias", "CallableTokens", "EMBED", "END", "LORA_TARGETS",
    "LoRA", "LoadedCLIP", "StaticTokens", "TextTower", "TokenInjection", "TowerOutput", "VisionTower",
    "WeightsUnavailableError", "format_trainable_report", "load_clip", "resolve_checkpoint",
    "trainable_parameter_report", "weights_fingerprint",
]

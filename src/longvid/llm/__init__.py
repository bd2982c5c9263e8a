from .kv_cache import KVCache
from .qwen2 import Qwen2Config, Qwen2ForCausalLM, Step

__all__ = ["KVCache", "Qwen2Config", "Qwen2ForCausalLM", "Step"]

"""longvid: understand hour-long videos with multimodal LLMs (VideoChat-Flash, Video-XL)."""

from .errors import LongvidError
from .models import VideoLLM, load
from .outputs import Answer, VisualTokens

__version__ = "0.1.0"
__all__ = ["Answer", "LongvidError", "VideoLLM", "VisualTokens", "load", "__version__"]

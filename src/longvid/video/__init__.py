from .reader import Video, VideoInfo, open_video
from .sampling import SamplingPlan, fps_plan, linspace_plan, timestamps_plan, trim, uniform_plan, videochat_flash_plan

__all__ = [
    "Video",
    "VideoInfo",
    "open_video",
    "SamplingPlan",
    "fps_plan",
    "linspace_plan",
    "timestamps_plan",
    "trim",
    "uniform_plan",
    "videochat_flash_plan",
]

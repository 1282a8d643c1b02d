from pipeline.models.pretrained import OFFLINE, input_norm
from pipeline.models.registry import SegModel, build_model

__all__ = ["OFFLINE", "SegModel", "build_model", "input_norm"]

from pipeline.models.registry import SegModel, build_model

__all__ = ["SegModel", "build_model"]

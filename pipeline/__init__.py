"""segpipe: a semantic-segmentation competition pipeline."""
import os

# albumentations checks PyPI for a newer version on import; nothing here may reach the network
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"

"""Every error segpipe raises on purpose. The CLI prints these as one line and exits with code 2;
anything else is a bug and keeps its traceback."""
from __future__ import annotations


class SegpipeError(Exception):
    """Base of the errors a user can fix; the message names the file, record and field."""


class ConfigError(SegpipeError, ValueError):
    """A config file or override is wrong."""


class DataError(SegpipeError, ValueError):
    """Bad input data; the message names the file, the record and the field."""


class TrainingError(SegpipeError, RuntimeError):
    """A training run cannot go on (non-finite losses, a device that is not there, ...)."""


class ParamGroupError(TrainingError):
    """Optimiser parameter groups do not cover every trainable parameter exactly once."""


class RunFolderError(TrainingError):
    """A run folder holds another config's run, or another process is training in it."""


class DiskSpaceError(SegpipeError, OSError):
    """A stage would write more than the disk under its output folder has free."""


class WeightsError(SegpipeError, ValueError):
    """A pretrained-weights file is missing or does not fit the model."""


class SubmissionError(SegpipeError, ValueError):
    """A submission file or prediction folder is malformed."""


class RLEError(SegpipeError, ValueError):
    """A run-length encoding is malformed."""

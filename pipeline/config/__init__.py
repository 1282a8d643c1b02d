"""Configuration: the schema (frozen dataclasses) and its loading, resolved once per command."""
from pipeline.config.invocation import DistInfo, StageArgs
from pipeline.config.load import (config_to_dict, config_to_yaml, flatten, load_config, load_config_file,
                                  parse_override)
from pipeline.config.schema import (Config, DataConfig, FoldsConfig, InferConfig, LossTerm, ModelConfig,
                                    RuntimeConfig, SplitConfig, SubmissionConfig, TrainConfig)
from pipeline.errors import ConfigError

__all__ = ["Config", "ConfigError", "DataConfig", "DistInfo", "FoldsConfig", "InferConfig", "LossTerm", "ModelConfig",
           "RuntimeConfig", "StageArgs",
           "SplitConfig", "SubmissionConfig", "TrainConfig", "config_to_dict", "config_to_yaml", "flatten", "load_config",
           "load_config_file", "parse_override"]

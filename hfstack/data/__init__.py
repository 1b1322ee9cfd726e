"""The data stage (step 1: download and preprocess the web). See `hfstack.data.pipeline`."""

from hfstack.data.config import DataConfig
from hfstack.data.pipeline import run_data

__all__ = ["DataConfig", "run_data"]

"""The data stage (step 1: download and preprocess the web). See `hfstack.web.pipeline`."""

from hfstack.web.config import DataConfig
from hfstack.web.pipeline import run_data

__all__ = ["DataConfig", "run_data"]

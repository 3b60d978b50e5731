from .defaults import get_cfg
from .setup import load_config

__all__ = ["get_cfg", "load_config"]

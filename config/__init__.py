from .setup import get_cfg, load_config

__all__ = ["get_cfg", "load_config"]

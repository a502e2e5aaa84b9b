"""The node's configuration: a TOML file plus ``SPINE_NODE_*`` variables, checked at start.

``settings`` holds the table of settings and ``load_config``; ``values`` parses single
values. Pipeline defaults are not decided here: they come from ``pipelines.options``.
"""
from dicom_node.config.settings import OTHER_VARIABLES, SETTINGS, NodeConfig, load_config

__all__ = ["NodeConfig", "SETTINGS", "OTHER_VARIABLES", "load_config"]

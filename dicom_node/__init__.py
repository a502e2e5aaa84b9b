"""The running node and its command line."""
__version__ = "0.1.0"

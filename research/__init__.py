"""Research tooling: phantoms, training, evaluation and volume I/O.

It uses ``pipelines``; production code (``pipelines``, ``storage``) never imports it, and
the node imports it only for its research subcommands (see docs/ARCHITECTURE.md).
"""

"""Pure work on images: phantoms, model bundles, inference and evaluation.

Nothing in this package talks to a network or a database (see DESIGN.md).
"""

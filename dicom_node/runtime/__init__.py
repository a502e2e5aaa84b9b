"""The running node: start-up and shutdown, series completion, job dispatch, delivery, reconciliation.

SQL (``storage``) is the source of truth between these parts; see docs/ARCHITECTURE.md.
"""

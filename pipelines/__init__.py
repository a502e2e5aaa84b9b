"""Pure work on images: CT series -> volume with geometry -> labels -> findings -> DICOM outputs.

``series/`` (input), ``model/`` (bundles, segmenter, post-processing), ``lesions``,
``outputs/`` (one module per IOD), ``options`` (the one source of defaults), ``process``
(the worker task) and ``run`` (the one orchestration for ``process`` and ``serve``).
Nothing here talks to a network or a database, reads the environment, or imports
``research``, ``storage`` or ``dicom_node`` (docs/ARCHITECTURE.md; tests/test_import_rules.py).
"""

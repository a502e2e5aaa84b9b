"""DICOM outputs, one module per IOD (``seg``, ``sr``), with the shared codes in ``codes``."""

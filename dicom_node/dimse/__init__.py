"""DICOM networking (DIMSE): the storage SCP, the SCU that delivers outputs, the payload check, statuses.

Named after the layer of the standard they implement; nothing here knows how a series is
processed (see docs/ARCHITECTURE.md).
"""

"""The quantitative spine report: per-vertebra heights, collapse, bone density and SINS CT components.

Measured on the segmentation and the CT, in each vertebra's own frame (``frame``), never
in the scanner's axes, so that a tilted or oblique acquisition gives the same numbers:

* ``heights``: anterior, middle and posterior body heights (mm), height loss against the
  vertebra's own posterior height and against its neighbours, the Genant grade (0-3) and
  morphology (wedge, biconcave, crush);
* ``density``: trabecular HU in a body ROI away from the cortex and any focus, and the
  series' bone-density flag (L1, else L2) with its threshold and source;
* ``sins``: the CT components of the Spinal Instability Neoplastic Score and their partial
  score (pain and alignment need the clinician and are never scored here).

Everything a measurement could not give is ``None`` with a ``..._reason``. ``report``
puts it together for ``pipelines.process`` (see docs/ARCHITECTURE.md).
"""

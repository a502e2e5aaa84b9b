"""Helpers of the tests, each written once (fixtures stay in ``tests/conftest.py``).

* ``paths``: the repository, the shared data folder (``SHARED_DATA``) and this venv's programs;
* ``programs``: external programs (DCMTK, dicom3tools, dcmqi, Orthanc, ...): find, require, dciodvfy,
  and the guard that keeps them out of a pure-Python run;
* ``waiting``: ``wait_until``, the one polling loop;
* ``dimse``: loopback ports, C-ECHO, the C-STORE senders (pynetdicom as stored, DCMTK storescu)
  and the DCMTK storescp peer;
* ``node_process``: ``spine-node serve`` as a subprocess; ``inprocess_node``: the node in-process
  with a stub worker task;
* ``series_files``: phantom and real CT series written as files to send;
* ``synthetic_ct``: small synthetic CT data sets, each knob a way to break them;
* ``seg_sr_cases``: CT series, reference label maps and grids for the SEG and SR tests;
* ``orthanc``: orthanc/'s scripts as modules, Orthanc's log and its DICOMweb plugin;
* ``web``, ``browser``, ``ohif``, ``pacs``: the dashboard's server, headless chromium, the OHIF
  viewer, a small PACS (Q/R SCP and DICOMweb) for the web, viewer and retrieve tests.
"""

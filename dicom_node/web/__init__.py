"""The node's web side: a dashboard (Jinja2 pages), a JSON API under ``/api/``, ``/healthz`` and ``/metrics``.

Served by the node process itself (``server.start_web``) with uvicorn on
``SPINE_NODE_HTTP_HOST:SPINE_NODE_HTTP_PORT`` (127.0.0.1:8011 by default; port 0 turns it
off). Every page and answer is read from SQL at request time (``storage.operations``), so
the dashboard shows what the node's tables hold and nothing else. No patient name or ID
appears unless ``SPINE_NODE_WEB_SHOW_PATIENT`` is on (``patient.py``).

* ``app.py``      the Starlette application: routes, access check, error pages
* ``api.py``      the JSON API and the operator actions (requeue, retry, pause, resume)
* ``pages.py``    the HTML pages
* ``health.py``   ``/healthz``: database, disk and workers, each with its own answer
* ``metrics.py``  ``/metrics``: a Prometheus collector reading SQL at each scrape
* ``stow.py``     ``POST /dicom-web/studies``: STOW-RS receive, with the promise of C-STORE
* ``server.py``   uvicorn in a thread of the node, on a socket bound before it starts
"""

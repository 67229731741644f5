"""The HTTP API and the dashboard, served by one ASGI process (``metricsmith api``).

:func:`metricsmith.api.app.create_app` builds the FastAPI application: the ``/v1`` resources (one
router module per resource in :mod:`metricsmith.api.routers`), ``/metrics`` for Prometheus,
``/healthz`` and ``/readyz``, and the dashboard page with its static files at ``/``. Every
metrics read goes through :class:`metricsmith.query.MetricsQueryService` (its two-tier cache);
authentication is by API key (:mod:`metricsmith.api.keys`). See docs/api.md.
"""

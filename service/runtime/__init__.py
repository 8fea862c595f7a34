"""What the flow runs on and reports to: the Prefect API (``api``), the Dask cluster
(``cluster``, ``warmup``), the home's Prefect deployment (``deployment``) and the events the
service sends Prefect (``events``)."""

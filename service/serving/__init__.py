"""``retrain serve``: the FastAPI app (``app``), its OpenAPI schema from the model's
(``openapi``), request rows (``rows``), the hot-swapped model (``holder``) and its metrics."""

"""Judging models: the champion on new rows and drift (``monitor``), retrain or keep
(``policy``), candidate against threshold and champion on the same rows (``evaluate``, the
gate; ``compare``, its paired bootstrap)."""

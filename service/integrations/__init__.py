"""Tools the people who use retrain already have: MLflow (``mlflow_export``, optional)."""

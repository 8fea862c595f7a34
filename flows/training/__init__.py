"""Training: a scikit-learn Pipeline in one task (``train``), XGBoost across the cluster
(``xgb``), and the model search among several candidates (``search``)."""

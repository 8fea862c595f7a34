"""Model files and the registry: reading and writing model files safely (``modelfile``),
scoring a model on rows (``scoring``), immutable versions with an atomically switched
``current`` (``registry``), deploying one (``deploy``, ``hooks``) and predicting new rows
(``predict``)."""

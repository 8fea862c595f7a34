"""A retrain model version as an MLflow pyfunc model ("models from code": MLflow copies this
file into the model and runs it to build the model; nothing is pickled).

The model's artifacts are the version's model file (skops or XGBoost UBJSON) and
``version.json`` (its version, sha256, schema and the trusted types). Loading checks the
sha256 and trusts only what retrain trusts (``flows.models.modelfile``); predicting prepares
the rows with ``flows.data.features``, as ``retrain predict`` and ``retrain serve`` do, so
``mlflow.pyfunc.load_model(...).predict(rows)`` answers what ``retrain predict`` answers:
``prediction`` and, for classifiers, ``probability_<class>``. retrain's ``core`` and
``flows`` packages travel with the model (MLflow's ``code_paths``), so it can be served by
``mlflow models serve`` wherever scikit-learn, skops, pandas and pydantic are installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RetrainModel(PythonModel):
    """Predictions of one retrain model version."""

    def load_context(self, context: Any) -> None:
        from core.records import ResolvedSchema
        from flows.models.modelfile import load_model_file

        described = json.loads(Path(context.artifacts["version"]).read_text())
        self.version = described["version"]
        self.schema = ResolvedSchema.model_validate(described["schema"])
        self.model = load_model_file(context.artifacts["model"], described["model_sha256"],
                                     described["trusted_types"], what=f"model {self.version}")

    def predict(self, context, model_input, params=None):  # no hints: MLflow would read them as a signature
        from flows.models.predict import predict_rows

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        result, _ = predict_rows(self.model, frame, self.schema, "input")
        return result.reset_index(drop=True)


mlflow.models.set_model(RetrainModel())

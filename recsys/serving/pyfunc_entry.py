"""MLflow "models from code" entry point for the retriever (see :mod:`recsys.serving.mlflow_model`).

MLflow copies this file into the logged model and executes it on load; it only names
the model object. No pickle is involved: the state is the bundle, logged as artifacts.
"""

from mlflow.models import set_model

from recsys.serving.mlflow_model import RetrieverPyfunc

set_model(RetrieverPyfunc())

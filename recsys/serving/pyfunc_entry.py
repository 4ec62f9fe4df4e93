"""MLflow "models from code" entry point for the retriever (see :mod:`recsys.serving.mlflow_model`).

MLflow copies this file into the logged model and executes it on load; it only names
the model object. No pickle is involved: the state is the bundle, logged as artifacts.
In ``mlflow models serve`` it also hardens the scoring server, so that no response
carries a traceback (:func:`~recsys.serving.mlflow_model.harden_scoring_server`).
"""

from mlflow.models import set_model

from recsys.serving.mlflow_model import RetrieverPyfunc, harden_scoring_server

harden_scoring_server()
set_model(RetrieverPyfunc())

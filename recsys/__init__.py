"""recsys: a recommender toolkit on user/item embeddings.

Data flows logs -> ``pipelines`` (polars) -> dataset directories -> models -> item/user
vectors -> content blend -> Annoy index -> :class:`Retriever`.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str):  # lazy: importing recsys must not import torch or mlflow
    if name == "Retriever":
        from recsys.serving.retriever import Retriever

        return Retriever
    if name == "evaluate":
        from recsys.evaluation import evaluate

        return evaluate
    if name == "Dataset":
        from recsys.data.dataset import Dataset

        return Dataset
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")

"""Recommender models behind one interface (see :mod:`recsys.models.base`)."""

from recsys.models.base import FactorModel, Recommender, topk

__all__ = ["FactorModel", "Recommender", "topk"]

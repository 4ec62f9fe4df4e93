"""Recommender models behind one interface (see :mod:`recsys.models.base`).

Importing this package imports neither ``implicit`` nor ``torch``: the MF models load
``implicit`` when fitted, and the torch-backed two-tower lives in
:mod:`recsys.models.two_tower` (``TwoTower``; its modules ``towers``, ``losses``,
``trainer``), imported on demand.
"""

from recsys.models.als import ALS
from recsys.models.base import FactorModel, Recommender, topk
from recsys.models.bpr import BPR
from recsys.models.mf import MFModel, validation_scorer

__all__ = ["ALS", "BPR", "FactorModel", "MFModel", "Recommender", "topk", "validation_scorer"]

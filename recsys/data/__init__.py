"""Data layer: id maps, dataset directories and training-data builders."""

from recsys.data.dataset import Dataset
from recsys.data.idmap import IdMap
from recsys.data.interactions import frame_to_csr, pair_table, to_csr, user_histories

__all__ = ["Dataset", "IdMap", "frame_to_csr", "pair_table", "to_csr", "user_histories"]

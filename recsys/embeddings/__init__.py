"""Content embeddings of items and their blend into the collaborative vector space.

See ``docs/content.md``. Heavy dependencies (torch, sentence-transformers) load only when
a :class:`MiniLMEncoder` first encodes.
"""

from recsys.embeddings.blend import ContentBlender, ItemVectorTable, RidgeMap
from recsys.embeddings.cache import EmbeddingCache
from recsys.embeddings.content import aggregate_tags, embed_items, item_texts
from recsys.embeddings.encoders import ContentEncoder, MiniLMEncoder, TfidfSvdEncoder

__all__ = [
    "ContentBlender",
    "ContentEncoder",
    "EmbeddingCache",
    "ItemVectorTable",
    "MiniLMEncoder",
    "RidgeMap",
    "TfidfSvdEncoder",
    "aggregate_tags",
    "embed_items",
    "item_texts",
]

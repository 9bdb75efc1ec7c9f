"""Search a gallery: an index over the evaluator's feature files (exact, HNSW or IVF-PQ, chosen from the size and a
memory budget) with ``build_index`` / ``VectorIndex.load(...).search(queries, k)``."""

from .features import FeatureFileError, read_features
from .index import IndexSearchError, VectorIndex, build_index
from .params import IndexParams, IndexParamsError, choose

__all__ = [
    "FeatureFileError",
    "IndexParams",
    "IndexParamsError",
    "IndexSearchError",
    "VectorIndex",
    "build_index",
    "choose",
    "read_features",
]

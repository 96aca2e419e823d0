"""The shared pieces of the vector index: exact scoring and query normalisation.

The index itself (one per node) is tested in test_node_index.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from meshrag.errors import ValidationError
from meshrag.store.vector_index import exact_top_k, unit_query_vector
from tests.store.conftest import DIM


def test_exact_top_k_ranks_by_cosine_and_ignores_vector_length() -> None:
    query = unit_query_vector(np.array([1.0, 0.0, 0.0, 0.0], np.float32), 4)
    rows = [
        (7, np.array([0.0, 1.0, 0.0, 0.0], np.float32).tobytes()),  # orthogonal
        (8, np.array([10.0, 10.0, 0.0, 0.0], np.float32).tobytes()),  # 45 degrees, long
        (9, np.array([0.5, 0.0, 0.0, 0.0], np.float32).tobytes()),  # same direction, short
        (3, np.zeros(4, np.float32).tobytes()),  # zero vector: scores 0, never divides by zero
    ]
    top = exact_top_k(query, 3, rows, 4)
    assert [key for key, _ in top] == [9, 8, 7]
    assert [score for _, score in top] == pytest.approx([1.0, np.sqrt(0.5), 0.0], abs=1e-6)
    assert exact_top_k(query, 0, rows, 4) == [] and exact_top_k(query, 5, [], 4) == []


def test_unit_query_vector_normalises_and_rejects_bad_queries() -> None:
    assert np.linalg.norm(unit_query_vector(np.full(DIM, 3.0), DIM)) == pytest.approx(1.0)
    for bad in (np.ones(DIM - 1), np.zeros(DIM), np.full(DIM, np.nan)):
        with pytest.raises(ValidationError) as caught:
            unit_query_vector(bad, DIM)
        assert caught.value.field == "vector"

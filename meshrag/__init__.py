"""MeshRAG: a peer-to-peer cluster for retrieval-augmented generation."""

__version__ = "0.1.0"

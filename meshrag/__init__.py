"""MeshRAG: a peer-to-peer cluster for retrieval-augmented generation."""

from meshrag.openmp import bound_openmp_spin

__version__ = "0.1.0"

# Before anything loads an OpenMP runtime (torch, usearch): each copy reads the bound once.
bound_openmp_spin()

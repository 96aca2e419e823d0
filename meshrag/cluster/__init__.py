"""Coordination between nodes: ring state, replicated writes, reads, repair."""

"""Node-local durable state: partitions of documents, chunks, vectors and tombstones.

SQLite is the source of truth; the usearch HNSW index of each partition is
derived from it and can always be caught up or rebuilt after a crash.
"""

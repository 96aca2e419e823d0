"""Node-local durable state: partitions of documents, chunks, vectors and tombstones.

SQLite is the source of truth; the node's one usearch HNSW index over the
vectors of every partition it holds is derived from it, and each partition's
share can always be caught up or rebuilt after a crash.
"""

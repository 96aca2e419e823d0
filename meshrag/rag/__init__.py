"""Retrieval-augmented generation: chunking, embedding, prompts and the pipeline."""

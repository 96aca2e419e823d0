"""Embedding as a cluster service: nodes that embed, the coordinator's split of a batch over them."""

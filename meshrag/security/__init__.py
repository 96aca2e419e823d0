"""Who may talk to a node: the cluster secret and its keys (node to node), API keys (clients)."""

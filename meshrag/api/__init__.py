"""HTTP interfaces: public (/v1), health and metrics; node-to-node routes come with the cluster."""

"""Who may talk to a node: the cluster secret and its keys (node to node), API keys (clients).

    secret.py    the cluster secret: read --secret-file, or create data_dir/cluster.secret (0600)
    keyring.py   installed secrets + the primary; HKDF subkeys per purpose; persisted (keyring.json)
    signing.py   pure: sign and verify /_mesh/ requests and responses (clock window, key ids)
    replay.py    pure: bounded nonce cache with expiry (replayed requests and datagrams)
    mesh_auth.py aiohttp side: the /_mesh/ middleware, the response signer, rejection counts
    rotation.py  `meshrag keys ...` applied cluster-wide (the /_mesh/keys route and its fan-out)
    api_keys.py  client API keys with scopes (public routes)

The secret itself never travels: requests carry an HMAC made with a key derived
from it, gossip packets a MAC (or AES-GCM) with two other derived keys.
"""

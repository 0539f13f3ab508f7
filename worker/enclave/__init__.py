"""The enclave runtime: the part of the agent that holds the confidential tier's private keys.

It runs as its own process (`python -m worker.enclave`, see __main__.py) so that the agent's host
process, which talks to the node, only ever handles ciphertext: `runtime.py` is the logic inside
the enclave, `host.py` the agent's handle on the process. Wire formats: docs/confidential.md.
"""

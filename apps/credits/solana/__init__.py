"""Solana plumbing of the credits app: SPL Token transfers (tokens.py), Solana Pay transfer
requests (pay.py), the JSON-RPC client (rpc.py) and the deposit check (verify.py).

Only rpc.py does I/O; nothing here imports Django except rpc.py's settings defaults.
"""

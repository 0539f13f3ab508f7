"""Buying credits with USDC on Solana: purchase references (services.deposit_reference_create),
the chain watcher (services.deposits_scan) and what a buyer may read (selectors). docs/payments.md."""

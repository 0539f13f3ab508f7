"""`python -m client proxy ...`: run the local confidential proxy (client/proxy.py).

Options fall back to the environment (PEER_UPSTREAM, PEER_API_KEY), so the key need not appear in
a process list.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from client.confidential import AttestationPolicy
from client.proxy import ProxyConfig, make_server

PROXY_DESCRIPTION = """\
Serve a local OpenAI-compatible endpoint that gives any OpenAI client the confidential tier.

For every chat request the proxy attests the enclaves serving the model (its own fresh nonce, its
own check of the evidence), seals the whole request to one of them, sends the node only what
routing and billing need, opens the sealed answer and checks every answer's enclave signature
before passing it on. Point any OpenAI SDK's base_url at http://HOST:PORT/v1.

Simulated enclaves prove nothing about hardware and are refused unless --allow-simulated
(development only).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client",
                                     description="Peer Cycles client tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    proxy = commands.add_parser("proxy", help="the local confidential-tier proxy",
                                description=PROXY_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    proxy.add_argument("--upstream", default=os.environ.get("PEER_UPSTREAM"),
                       help="the node's URL, e.g. https://node.example (env PEER_UPSTREAM)")
    proxy.add_argument("--api-key", default=os.environ.get("PEER_API_KEY"),
                       help="your API key on the node (env PEER_API_KEY)")
    proxy.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s)")
    proxy.add_argument("--port", type=int, required=True, help="port to listen on")
    proxy.add_argument("--allow-simulated", action="store_true",
                       help="accept simulated enclaves: NO hardware guarantee, development only")
    proxy.add_argument("--model-digest", action="append", default=[], metavar="SHA256",
                       help="accept only enclaves serving this model digest (sha256:<hex>); "
                            "repeat for several; default: any")
    proxy.add_argument("--code-measurement", action="append", default=[], metavar="M",
                       help="accept only enclaves running this code measurement; repeat for "
                            "several; default: any")
    proxy.add_argument("--attestation-ttl", type=float, default=300.0, metavar="SECONDS",
                       help="how long a verified enclave is used before attesting again "
                            "(default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.upstream:
        parser.error("--upstream (or PEER_UPSTREAM) is required")
    if not args.api_key:
        parser.error("--api-key (or PEER_API_KEY) is required")
    return run_proxy(args)


def run_proxy(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise
    policy = AttestationPolicy(allow_simulated=args.allow_simulated,
                               allowed_model_digests=frozenset(args.model_digest),
                               allowed_code_measurements=frozenset(args.code_measurement))
    config = ProxyConfig(upstream=args.upstream, api_key=args.api_key, host=args.host,
                         port=args.port, policy=policy, attestation_ttl=args.attestation_ttl)
    server = make_server(config)
    host, port = server.server_address[:2]
    print(f"proxy listening on http://{host}:{port}/v1 -> {args.upstream}", flush=True)
    if args.allow_simulated:
        print("SIMULATED ENCLAVES ALLOWED: no hardware guarantee", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

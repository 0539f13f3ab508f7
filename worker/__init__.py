"""The Peer Cycles worker agent: connects out to a node and serves inference jobs.

This package never imports Django; the node imports `worker.protocol`, `worker.prompt`
and `worker.commitment` so that both sides share one definition of the wire format.
"""

__version__ = "0.1.0"

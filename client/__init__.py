"""The Peer Cycles client side: code a user runs to talk to a node and to check what it says.

Never imports Django, so it installs and runs without the node.
"""

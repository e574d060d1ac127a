"""Python SDK and command-line client of the BISE pruning service.

``BiseClient`` talks to the v1 HTTP API; ``bise`` (bise_client.cli) is built on it and
also forwards the local commands (``bise prune`` ...) to bise_core. Nothing here imports
the service's own packages: a user installs this and talks HTTP.
"""

from bise_client.sdk import BiseClient, BiseError

__all__ = ["BiseClient", "BiseError"]

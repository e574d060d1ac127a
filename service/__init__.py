"""What the API and the workers share: settings, database, storage, events, ids.

Neither ``api`` nor ``worker`` imports the other; both import this package. ``bise_core``
imports none of them.
"""

"""``python -m bise_core`` is the same CLI as ``bise``."""

from bise_core.cli import main

raise SystemExit(main())

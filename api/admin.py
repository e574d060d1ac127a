"""Administration CLI: ``python -m api.admin create-key --project NAME`` and friends.

Keys are printed once, on stdout alone, so that scripts can capture them; everything else
goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from service.db import session_scope
from service.keys import create_key, revoke_key


def _create_key(args: argparse.Namespace) -> int:
    with session_scope() as session:
        key, raw = create_key(session, args.project)
        project = key.project_id
        info = {"key": raw, "key_id": key.id, "project_id": project, "project": args.project}
    if args.json:
        print(json.dumps(info))
    else:
        print(raw)
        print(f"key {key.id} for project {args.project} ({project}); store it now, it is not shown again",
              file=sys.stderr)
    return 0


def _revoke_key(args: argparse.Namespace) -> int:
    with session_scope() as session:
        key = revoke_key(session, args.key)
        if key is None:
            print(f"no such key: {args.key[:14]}...", file=sys.stderr)
            return 1
        print(f"revoked {key.id}", file=sys.stderr)
    return 0


def _webhook_secret(args: argparse.Namespace) -> int:
    from service.keys import get_or_create_project

    with session_scope() as session:
        print(get_or_create_project(session, args.project).webhook_secret)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from service.migrate import upgrade

    upgrade(revision=args.revision)
    print(f"database migrated to {args.revision}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m api.admin", description="BISE service administration")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create-key", help="create an API key for a project (the project is created if new)")
    p.add_argument("--project", required=True)
    p.add_argument("--json", action="store_true", help="print key, key id and project id as JSON")
    p.set_defaults(func=_create_key)
    p = sub.add_parser("revoke-key", help="revoke a key, given its id (key_...) or the key itself")
    p.add_argument("key")
    p.set_defaults(func=_revoke_key)
    p = sub.add_parser("webhook-secret", help="print the project's webhook signing secret")
    p.add_argument("--project", required=True)
    p.set_defaults(func=_webhook_secret)
    p = sub.add_parser("migrate", help="apply the database migrations")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

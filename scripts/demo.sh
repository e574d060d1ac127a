#!/usr/bin/env bash
# The main job end to end on the embedded default, no external service needed: train a plain
# (biased) CNN on built-in coloured digits, start the API and a worker on SQLite and a local
# folder, prune the model through the HTTP API while following its event stream, print the
# before/after table and where the results are, and stop the service (service/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m service.demo "$@"

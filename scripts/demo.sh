#!/usr/bin/env bash
# Set up a virtual environment (once) and run the demo mesh on an embedded nats-server.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check -e .
exec crankmesh demo "$@"

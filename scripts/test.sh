#!/usr/bin/env bash
# Set up a virtual environment (once) and run the whole test suite.
# This is THE test command: the README documents it and .ci/run calls exactly it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch==2.13.0 (the `ml` extra) is optional for users; the suite installs it so the
# python-ml profile is tested. Its tests skip cleanly where it is absent.
python -m pip install --quiet --disable-pip-version-check -e '.[dev,ml]'
ruff check crankmesh tests scripts examples
mypy
python -m pytest -n 2 "$@"

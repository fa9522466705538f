#!/usr/bin/env bash
# Runs pytest the way a background job of a non-interactive shell (`cmd &` in a script), nohup
# or some CI runners start it: SIGINT and SIGQUIT ignored, which every child inherits, and stdin
# from /dev/null. The suite must pass this way too (issue 12): a test that sends Ctrl-C must set
# up the disposition it relies on in its child, not inherit the terminal's.
#
#   tests/run_detached.sh tests/test_interrupt.py -q     # any pytest arguments
#
# PYTHON picks the interpreter (default: the repository's .venv, else python3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
# `trap ''` sets SIG_IGN, which exec keeps: pytest starts exactly as under `nohup` or `cmd &`.
trap '' INT QUIT
exec "$python" -m pytest "$@" </dev/null

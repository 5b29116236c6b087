#!/bin/sh
# bench/gpu_check.py, with the packages that a lent GPU machine lacks when it is given
# --wheels ARCHIVE first: the wheels that bench/gpu_wheels.sh packed are installed into a
# folder of their own, put on PYTHONPATH, and removed afterwards. The other arguments go to
# gpu_check.py (--dry-run, --out FILE). PYTHON names the interpreter (default python3).
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ "${1-}" = "--wheels" ]; then
    site=$(mktemp -d)
    trap 'rm -rf "$site"' EXIT
    "$PYTHON" -m tarfile --filter data -e "$2" "$site/wheels"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --target "$site/packages" "$site"/wheels/*.whl
    export PYTHONPATH="$site/packages${PYTHONPATH:+:$PYTHONPATH}"
    shift 2
fi
"$PYTHON" bench/gpu_check.py "$@"

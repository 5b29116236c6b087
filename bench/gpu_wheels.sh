#!/bin/sh
# Packs the wheels that bench/gpu_check.py needs on a lent GPU machine into
# .gpu_wheels/wheels.tar.xz, for `carry` (README, Development). That machine has Python 3.12
# with torch, transformers, numpy, OpenCV, aiohttp, requests, psutil, prometheus-client and
# nvidia-ml-py, and can fetch nothing. Each package comes at the version that this checkout's
# .venv runs (PYTHON names another interpreter), so the GPU runs what CI tests. Run it here.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
# What the machine lacks of the worker's needs (the musetalk engine; WebRTC; its HTTP API, upload
# checks and offline voice) and of the manager's (flask under gunicorn's gevent workers), with
# what those need in turn.
PACKAGES="diffusers
aiortc aioice av cryptography cffi pycparser dnspython google-crc32c ifaddr pyee pylibsrtp pyopenssl
aiohttp-cors apispec apispec-webframeworks marshmallow filetype pillow-heif espeakng-loader soxr num2words
flask flask-cors blinker itsdangerous gunicorn gevent greenlet zope.event zope.interface"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pins=$("$PYTHON" -c 'import sys; from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))' $PACKAGES)
# shellcheck disable=SC2086  # one argument per pin
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$work" $pins
# Wheels are zip files deflated one file at a time (70 MB here); stored as they are and then
# compressed together, they come to 47 MB, under the 64 MiB that may travel with a command.
"$PYTHON" - "$work"/*.whl <<'PY'
import sys
import zipfile

for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as wheel:
        files = [(info, wheel.read(info)) for info in wheel.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as wheel:
        for info, data in files:
            info.compress_type = zipfile.ZIP_STORED
            wheel.writestr(info, data)
PY
mkdir -p .gpu_wheels
(cd "$work" && tar -cf - ./*.whl) | xz -6 -T0 > .gpu_wheels/wheels.tar.xz
ls -l .gpu_wheels/wheels.tar.xz

#!/usr/bin/env bash
# The Triton Python stub loads the system libpython3.11 and finds its packages through the
# python3 of the venv, so the venv must be made from the system Python 3.11.
set -euo pipefail
py="${1:-/usr/bin/python3.11}"
fail() { echo "error: $py cannot host the Triton Python backend: $1" >&2; exit 1; }
[ -x "$py" ] || fail "not found (install Debian's python3.11 and python3.11-venv, or set SYSTEM_PYTHON)"
version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$version" = "3.11" ] || fail "it is Python $version; the bundled stub is built for 3.11"
"$py" -c 'import venv, ensurepip' 2>/dev/null || fail "the venv module is missing (apt-get install python3.11-venv)"
libdir=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
ls "$libdir"/libpython3.11.so* >/dev/null 2>&1 || fail "no shared libpython3.11.so in $libdir (apt-get install libpython3.11)"

#!/usr/bin/env bash
# make test: runs every suite under t/ with prove against the built
# modules.  The project's Test::Nginx::Socket (t/compat) is used only when
# the real one is not installed.  Arguments, if any, name the suites.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

export TEST_NGINX_MODULES=$top/build/modules
export TEST_NGINX_SMARTFLOW_CONF=$top/conf
export TEST_NGINX_BINARY=${TEST_NGINX_BINARY:-/usr/sbin/nginx}

if [ -n "${SMARTFLOW_ASAN:-}" ]; then
    # the modules built with AddressSanitizer, in nginx with its runtime
    export TEST_NGINX_MODULES=$top/build-asan/modules
    export TEST_NGINX_BINARY=$top/scripts/nginx-asan
    export SMARTFLOW_ASAN_DIR=$top/build-asan/reports
    rm -rf "$SMARTFLOW_ASAN_DIR"
    mkdir -p "$SMARTFLOW_ASAN_DIR"
fi

if ! perl -MTest::Nginx::Socket -e 1 2>/dev/null; then
    export PERL5LIB=$top/t/compat${PERL5LIB:+:$PERL5LIB}
fi

if [ ! -d t/clients/node_modules ] \
   || [ t/clients/package-lock.json -nt t/clients/node_modules ]
then
    (cd t/clients && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ $# -eq 0 ]; then
    set -- t
fi

status=0
prove -r "$@" || status=$?

if [ -n "${SMARTFLOW_ASAN:-}" ] && ls "$SMARTFLOW_ASAN_DIR"/asan* >/dev/null 2>&1
then
    echo "smartflow: AddressSanitizer reports:" >&2
    head -60 "$SMARTFLOW_ASAN_DIR"/asan* >&2
    status=1
fi

exit $status

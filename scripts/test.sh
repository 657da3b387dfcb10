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

if ! perl -MTest::Nginx::Socket -e 1 2>/dev/null; then
    export PERL5LIB=$top/t/compat${PERL5LIB:+:$PERL5LIB}
fi

if [ -f t/clients/package-lock.json ] \
   && [ ! -d t/clients/node_modules ] || [ t/clients/package-lock.json -nt t/clients/node_modules ]
then
    (cd t/clients && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ $# -eq 0 ]; then
    set -- t
fi

exec prove -r "$@"

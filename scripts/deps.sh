#!/bin/sh
# Installs the Debian packages the build, the gateway and the test suites
# need.  Idempotent: nothing is fetched when every package is present.
set -eu

PKGS="nginx-core nginx-dev libnginx-mod-http-echo
      gcc g++ make clang libclang-rt-14-dev
      libpcre2-dev libssl-dev zlib1g-dev
      libyajl-dev libcurl4-openssl-dev libhiredis-dev
      libfaiss-dev libopenblas-dev
      redis-server wrk valgrind curl openssl
      libtest-base-perl libtext-diff-perl libwww-perl libjson-pp-perl
      libhttp-daemon-perl
      python3-prometheus-client python3-stdnum
      nodejs npm"

missing=""
for p in $PKGS; do
    # nodejs/npm may come from elsewhere on a developer machine
    case $p in
        nodejs) command -v node >/dev/null 2>&1 && continue ;;
        npm) command -v npm >/dev/null 2>&1 && continue ;;
    esac
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null \
         | grep -q 'install ok installed'
    then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "smartflow: missing Debian packages:$missing" >&2
    echo "smartflow: run 'make deps' as root" >&2
    exit 1
fi

echo "smartflow: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# the nginx package would start a system nginx on port 80; keep it down
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends $missing

#!/usr/bin/env bash
# make run: renders the shipped conf/ into the state folder, routes the
# providers the environment names, and runs nginx in the foreground.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
port=${SMARTFLOW_PORT:-8080}
listen=${SMARTFLOW_LISTEN:-127.0.0.1}
state=${SMARTFLOW_STATE_DIR:-$top/var}
modules=${SMARTFLOW_MODULES:-$top/build/modules}

mkdir -p "$state"/{conf,logs,tmp}
state=$(cd "$state" && pwd)

if [ -z "${SMARTFLOW_MASTER_KEY:-}" ]; then
    # generated once, kept in the state folder
    if [ ! -s "$state/master.key" ]; then
        (umask 077; printf 'sk-sf-%s\n' "$(openssl rand -hex 24)" \
            > "$state/master.key")
    fi
    SMARTFLOW_MASTER_KEY=$(cat "$state/master.key")
    export SMARTFLOW_MASTER_KEY
    key_note="generated, kept in $state/master.key"
else
    key_note="from SMARTFLOW_MASTER_KEY"
fi

# the key that seals provider credentials at rest, generated once
if [ ! -s "$state/credentials.key" ]; then
    (umask 077; openssl rand -hex 32 > "$state/credentials.key")
fi

# the audit trail's HMAC key, generated once: "KID HEX NOT_BEFORE NOT_AFTER"
if [ ! -s "$state/audit.keys" ]; then
    (umask 077; printf 'k1 %s - -\n' "$(openssl rand -hex 32)" \
        > "$state/audit.keys")
fi

# "scheme://host[:port][/path]" -> globals url_scheme url_host url_port url_path
parse_url() {
    local re='^(https?)://([^/:]+)(:([0-9]+))?(/.*)?$'
    if [[ ! $1 =~ $re ]]; then
        echo "smartflow: cannot use base URL '$1'" >&2
        exit 1
    fi
    url_scheme=${BASH_REMATCH[1]}
    url_host=${BASH_REMATCH[2]}
    url_port=${BASH_REMATCH[4]:-}
    url_path=${BASH_REMATCH[5]:-}
    url_path=${url_path%/}
    if [ -z "$url_port" ]; then
        [ "$url_scheme" = https ] && url_port=443 || url_port=80
    fi
}

providers=$state/conf/providers.conf
routed="smartflow-echo (built-in demo)"

{
    echo "# written by scripts/run.sh from the environment"
    echo "smartflow_provider demo type=echo;"
    echo "smartflow_route smartflow-echo demo;"
} > "$providers"

# provider NAME TYPE KEYVAR URL DEFAULT_PATH ROUTES...
add_provider() {
    local name=$1 type=$2 keyvar=$3 url=$4 path=$5 key=""
    shift 5
    parse_url "$url"
    [ -n "$url_path" ] && path=$url_path
    [ -n "${!keyvar:-}" ] && key=" key=env:$keyvar"
    {
        echo "upstream sf_$name {"
        echo "    server $url_host:$url_port;"
        echo "    keepalive 32;"
        echo "}"
        echo "smartflow_provider $name type=$type"
        echo "    upstream=$url_scheme://sf_$name host=$url_host"
        echo "    path=$path$key;"
        for r in "$@"; do
            echo "smartflow_route $r $name;"
        done
    } >> "$providers"
    routed="$routed, $* -> $name ($url_scheme://$url_host:$url_port$path)"
}

if [ -n "${OPENAI_API_KEY:-}${OPENAI_BASE_URL:-}" ]; then
    add_provider openai openai OPENAI_API_KEY \
        "${OPENAI_BASE_URL:-https://api.openai.com/v1}" /v1 \
        'gpt-*' 'o1*' 'o3*' 'o4*' 'chatgpt-*' 'text-embedding-*'
fi

# Anthropic and Gemini natively (Messages API, generateContent); as their
# SDKs read them, neither base URL carries the API version
if [ -n "${ANTHROPIC_API_KEY:-}${ANTHROPIC_BASE_URL:-}" ]; then
    url=${ANTHROPIC_BASE_URL:-https://api.anthropic.com}
    add_provider anthropic anthropic ANTHROPIC_API_KEY "${url%/}/v1" /v1 \
        'claude-*'
fi

if [ -n "${GEMINI_API_KEY:-}${GEMINI_BASE_URL:-}" ]; then
    url=${GEMINI_BASE_URL:-https://generativelanguage.googleapis.com}
    add_provider gemini gemini GEMINI_API_KEY "${url%/}/v1beta" /v1beta \
        'gemini-*'
fi

for f in "$top"/conf/*.conf; do
    sed -e "s|@MODULES@|$modules|g" -e "s|@STATE@|$state|g" \
        -e "s|@LISTEN@|$listen:$port|g" "$f" > "$state/conf/$(basename "$f")"
done

cat <<BANNER
Smartflow gateway on http://$listen:$port
  key:    $SMARTFLOW_MASTER_KEY  ($key_note)
  models: $routed
  state:  $state
  try:
    curl http://127.0.0.1:$port/v1/chat/completions \\
      -H "Authorization: Bearer $SMARTFLOW_MASTER_KEY" \\
      -H 'Content-Type: application/json' \\
      -d '{"model":"smartflow-echo","messages":[{"role":"user","content":"Hello"}]}'
  or point an OpenAI SDK at base URL http://127.0.0.1:$port/v1 with that key.
  audit:  $state/audit (check it: build/smartflow-verify $state/audit)
  virtual keys for applications (kept in $state/keys/):
    curl http://127.0.0.1:$port/api/auth/virtual-keys \\
      -H "Authorization: Bearer $SMARTFLOW_MASTER_KEY" \\
      -d '{"name":"my-app","rpm":60,"models":["smartflow-*"]}'
BANNER

exec nginx -p "$state" -c "$state/conf/nginx.conf"

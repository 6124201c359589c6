#!/bin/sh
# Fill in the ingress's configuration from the environment the launcher gives
# the container, refusing values that could change its meaning, then run nginx.
set -eu
umask 077
fail() { echo "ingress: $*" >&2; exit 2; }
# grep matches line by line: a value with a newline in it is refused first,
# or "good\nanything" would pass on its first line.
valid() { [ "$(printf '%s' "$2" | wc -l)" -eq 0 ] && printf '%s' "$2" | grep -Eq "$1"; }
valid '^[a-z][a-z0-9-]{0,29}$' "${SANDBOX_NAME:-}" || fail "SANDBOX_NAME is missing or not a sandbox name"
valid '^[A-Za-z0-9_-]{32,128}$' "${SANDBOX_ACCESS_TOKEN:-}" || fail "SANDBOX_ACCESS_TOKEN is missing or malformed"
valid '^[0-9]{1,5}$' "${SANDBOX_PUBLIC_PORT:-}" || fail "SANDBOX_PUBLIC_PORT is missing"
valid '^[0-9]{1,5}$' "${SANDBOX_LISTEN_PORT:-}" || fail "SANDBOX_LISTEN_PORT is missing"
# No SANDBOX_UPSTREAM: a sandbox with no front-end (`frontend: none`), whose
# page routes answer that it serves only the API.
export SANDBOX_UPSTREAM="${SANDBOX_UPSTREAM:-}"
[ -z "$SANDBOX_UPSTREAM" ] || valid '^[a-z0-9.-]+:[0-9]{1,5}$' "$SANDBOX_UPSTREAM" \
  || fail "SANDBOX_UPSTREAM is not host:port"
# The healthcheck's own listener, on 127.0.0.1 only (nginx.conf.template),
# and the UI's path it asks; never the door's port.
valid '^[0-9]{1,5}$' "${SANDBOX_HEALTH_PORT:-}" || fail "SANDBOX_HEALTH_PORT is missing"
[ "$SANDBOX_HEALTH_PORT" != "$SANDBOX_LISTEN_PORT" ] || fail "SANDBOX_HEALTH_PORT is the door's port"
export SANDBOX_UPSTREAM_HEALTH_PATH="${SANDBOX_UPSTREAM_HEALTH_PATH:-/}"
# As the policy's schema has it: no quote, space, $ or ; that nginx would read.
valid '^/[A-Za-z0-9._~/?=&%-]{0,254}$' "$SANDBOX_UPSTREAM_HEALTH_PATH" \
  || fail "SANDBOX_UPSTREAM_HEALTH_PATH is not a URL path"
valid '^[a-z0-9.-]+:[0-9]{1,5}$' "${SANDBOX_API_UPSTREAM:-}" || fail "SANDBOX_API_UPSTREAM is not host:port"
valid '^[A-Za-z0-9_-]{32,128}$' "${SANDBOX_API_KEY:-}" || fail "SANDBOX_API_KEY is missing or malformed"
# The embedding model's own server, where the policy has one; without it,
# /v1/embeddings is answered here (404), never asked of the chat server.
export SANDBOX_EMBEDDINGS_UPSTREAM="${SANDBOX_EMBEDDINGS_UPSTREAM:-}"
[ -z "$SANDBOX_EMBEDDINGS_UPSTREAM" ] || valid '^[a-z0-9.-]+:[0-9]{1,5}$' "$SANDBOX_EMBEDDINGS_UPSTREAM" \
  || fail "SANDBOX_EMBEDDINGS_UPSTREAM is not host:port"
# The aliases given to a call that names no model (the policy's schema's
# form), where the launcher gives them.
for model in SANDBOX_CHAT_MODEL SANDBOX_EMBEDDING_MODEL; do
  eval "value=\${$model:-}"
  [ -z "$value" ] || valid '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$' "$value" || fail "$model is not a model alias"
  export "$model=$value"
done
# The UI's Content-Security-Policy, written into a quoted nginx string: no
# double quote, backslash, $, brace or newline, nothing a header may not hold.
# (The length is checked apart: grep -E builds a machine the size of a
# bounded repetition, and {1,4000} runs it out of the container's memory.)
valid "^[A-Za-z0-9 ':;/.*+=_-]+\$" "${SANDBOX_CSP:-}" && [ "${#SANDBOX_CSP}" -le 4000 ] \
  || fail "SANDBOX_CSP is missing or not a policy"
# Who the owner is to a UI that takes its user from headers (a recipe's,
# launcher/recipes.py): an address-like name and a role, sent on every
# request to it in place of any the client sent; empty for other UIs, which
# then get neither header at all.
export SANDBOX_UI_USER="${SANDBOX_UI_USER:-}" SANDBOX_UI_ROLE="${SANDBOX_UI_ROLE:-}"
[ -z "$SANDBOX_UI_USER" ] || valid '^[a-z0-9._-]{1,64}@[a-z0-9.-]{1,64}$' "$SANDBOX_UI_USER" \
  || fail "SANDBOX_UI_USER is not a user's address"
[ -z "$SANDBOX_UI_ROLE" ] || valid '^[a-z]{1,16}$' "$SANDBOX_UI_ROLE" || fail "SANDBOX_UI_ROLE is not a role"
mkdir -p /tmp/nginx
# The door is for the host only: nginx listens on this container's addresses
# outside the sandbox's own network, none on it, so that no part can reach the
# ingress from inside (to use it, or to fill its log with refusals that read
# like a browser's). Without SANDBOX_INTERNAL_SUBNET (a cluster's pod has one
# address), it listens on every address.
LISTEN="listen $SANDBOX_LISTEN_PORT default_server;"
if [ -n "${SANDBOX_INTERNAL_SUBNET:-}" ]; then
  valid '^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$' "$SANDBOX_INTERNAL_SUBNET" \
    || fail "SANDBOX_INTERNAL_SUBNET is not an IPv4 network"
  # This container's own addresses: /proc/net/fib_trie names each above a
  # "/32 host LOCAL" line.
  LISTEN=$(awk -v subnet="$SANDBOX_INTERNAL_SUBNET" -v port="$SANDBOX_LISTEN_PORT" '
    function number(address,    part) { split(address, part, "."); return ((part[1] * 256 + part[2]) * 256 + part[3]) * 256 + part[4] }
    BEGIN { split(subnet, net, "/"); size = 2 ^ (32 - net[2]); first = int(number(net[1]) / size) * size }
    / \|-- / { address = $2; next }
    /\/32 host LOCAL/ { n = number(address)
                        if (address !~ /^127\./ && !(n >= first && n < first + size) && !(address in seen)) {
                          seen[address] = 1; printf "listen %s:%s default_server;\n", address, port } }
  ' /proc/net/fib_trie)
  [ -n "$LISTEN" ] || fail "no address outside the sandbox's network ($SANDBOX_INTERNAL_SUBNET) to listen on"
fi
export SANDBOX_LISTEN="$LISTEN"
# The launcher's own requests carry this (launcher/access.py, launcher_mark):
# made of the token and the backend's key, which no API client (the token)
# or front-end (the key) holds both of.
SANDBOX_LAUNCHER_MARK=$(printf 'sandbox-launcher:%s:%s' "$SANDBOX_API_KEY" "$SANDBOX_ACCESS_TOKEN" | sha256sum | cut -c1-32)
export SANDBOX_LAUNCHER_MARK
# The API token (launcher/access.py, api_token), which `sandbox env` gives
# scripts and editors: made of the access token, so that the launcher need
# keep no second secret, and opening the API (/v1/) only. Its holder cannot
# make the access token of it, so cannot pass for the browser (the cookie)
# or open the UI's routes, where the API's bound on calls in progress does
# not hold.
SANDBOX_API_TOKEN=$(printf 'sandbox-api-token:%s' "$SANDBOX_ACCESS_TOKEN" | sha256sum | cut -c1-64)
export SANDBOX_API_TOKEN
# The tokens and the backend's key are read from the environment, never put on
# a command line: every local user of the host can read the command lines of a
# container's processes.
awk 'BEGIN { split("NAME ACCESS_TOKEN PUBLIC_PORT LISTEN UPSTREAM API_UPSTREAM API_KEY EMBEDDINGS_UPSTREAM HEALTH_PORT UPSTREAM_HEALTH_PATH CHAT_MODEL EMBEDDING_MODEL CSP LAUNCHER_MARK UI_USER UI_ROLE API_TOKEN", names, " ") }
     { for (i = 1; i <= 17; i++) { value = ENVIRON["SANDBOX_" names[i]]
                                   gsub(/&/, "\\\\&", value)  # a literal & (a health path may have one), not the match
                                   gsub("@" (names[i] == "ACCESS_TOKEN" ? "TOKEN" : names[i]) "@", value) }
       print }' \
    /opt/ingress/nginx.conf.template > /tmp/nginx/nginx.conf
addresses=$(printf '%s\n' "$LISTEN" | sed 's/listen //; s/ default_server;//' | tr '\n' ' ')
echo "ingress: listening on ${addresses}for http://127.0.0.1:$SANDBOX_PUBLIC_PORT/, upstream ${SANDBOX_UPSTREAM:-none (the API only)}"
# Everything nginx writes passes through log-filter.awk on its way to the
# container's log, which the token must never reach.
rm -f /tmp/nginx/log && mkfifo /tmp/nginx/log
LC_ALL=C awk -W interactive -f /opt/ingress/log-filter.awk < /tmp/nginx/log &
exec nginx -e stderr -c /tmp/nginx/nginx.conf -g 'daemon off;' > /tmp/nginx/log 2>&1

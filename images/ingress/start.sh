#!/bin/sh
# Fill in the ingress's configuration from the environment the launcher gives
# the container, refusing values that could change its meaning, then run nginx.
set -eu
umask 077
fail() { echo "ingress: $*" >&2; exit 2; }
valid() { printf '%s' "$2" | grep -Eq "$1"; }
valid '^[a-z][a-z0-9-]{0,29}$' "${SANDBOX_NAME:-}" || fail "SANDBOX_NAME is missing or not a sandbox name"
valid '^[A-Za-z0-9_-]{32,128}$' "${SANDBOX_ACCESS_TOKEN:-}" || fail "SANDBOX_ACCESS_TOKEN is missing or malformed"
valid '^[0-9]{1,5}$' "${SANDBOX_PUBLIC_PORT:-}" || fail "SANDBOX_PUBLIC_PORT is missing"
valid '^[0-9]{1,5}$' "${SANDBOX_LISTEN_PORT:-}" || fail "SANDBOX_LISTEN_PORT is missing"
valid '^[a-z0-9.-]+:[0-9]{1,5}$' "${SANDBOX_UPSTREAM:-}" || fail "SANDBOX_UPSTREAM is not host:port"
mkdir -p /tmp/nginx
sed -e "s/@NAME@/$SANDBOX_NAME/g" -e "s/@TOKEN@/$SANDBOX_ACCESS_TOKEN/g" \
    -e "s/@PUBLIC_PORT@/$SANDBOX_PUBLIC_PORT/g" -e "s/@LISTEN_PORT@/$SANDBOX_LISTEN_PORT/g" \
    -e "s/@UPSTREAM@/$SANDBOX_UPSTREAM/g" /opt/ingress/nginx.conf.template > /tmp/nginx/nginx.conf
echo "ingress: listening on :$SANDBOX_LISTEN_PORT for http://127.0.0.1:$SANDBOX_PUBLIC_PORT/, upstream $SANDBOX_UPSTREAM"
# Everything nginx writes passes through here on its way to the container's
# log, which the token must never reach: nginx's own error lines quote the
# request line and Host of the request at fault (a body too large, a UI that
# is down), and only the refusal log's fields go through sandbox.js.
rm -f /tmp/nginx/log && mkfifo /tmp/nginx/log
LC_ALL=C sed -u "s/$SANDBOX_ACCESS_TOKEN/.../g" < /tmp/nginx/log &
exec nginx -e stderr -c /tmp/nginx/nginx.conf -g 'daemon off;' > /tmp/nginx/log 2>&1

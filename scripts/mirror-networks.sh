#!/usr/bin/env bash
# Print, as CIDRs separated by commas, the non-public addresses that this
# machine's own apt mirrors resolve to (empty when they are all public). Some
# networks serve package mirrors from private addresses, which the build proxy
# refuses unless the machine's owner names them in SANDBOX_BUILD_ALLOW_NETWORKS.
set -euo pipefail
hosts=$(grep -rhoE '^(URIs:|deb(-src)?) +(\[[^]]*\] +)?https?://[^/ ]+' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null \
        | grep -oE 'https?://[^/ ]+' | sed -E 's#^https?://##; s#:[0-9]+$##' | sort -u || true)
for host in $hosts; do
  getent ahostsv4 "$host" 2>/dev/null | awk '{print $1}' || true
done | sort -u | python3 -c '
import ipaddress, sys
found = [a for a in sys.stdin.read().split() if not ipaddress.ip_address(a).is_global
         and not ipaddress.ip_address(a).is_loopback and not ipaddress.ip_address(a).is_link_local]
print(",".join(f"{a}/32" for a in found))'

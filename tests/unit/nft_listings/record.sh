#!/usr/bin/env bash
# Re-record the listings test_nft_canon.py compares with (when the nft renderer changes on purpose).
# Usage, as root: record.sh NFT_VERSION [ROOT]: loads the transaction of policy.toml (published ports 8080/tcp
# and 5353/udp) with the nft of ROOT (a debootstrap of a Debian suite with nftables; default: this host's
# nft) in a throw-away network namespace, and writes what that nft lists back to nft-NFT_VERSION.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$1 root=${2:-}
python=${PYTHON:-python3}
netns="dgrecord-$$"
policy=$(mktemp) payload=$(mktemp)
trap 'ip netns del "$netns" 2>/dev/null || true; rm -f "$policy" "$payload"' EXIT
# DG_DROP_KEYS="limit max_connections": the policy without those keys (nft 0.9.8 loads no set statement
# into a current kernel, and no `ct count` one into Debian 11's own: record 0.9.8 in the VM matrix's
# bullseye guest with DG_DROP_KEYS=max_connections).
drop=$(printf '%s' "${DG_DROP_KEYS:-}" | tr ' ' '|')
if [ -n "$drop" ]; then grep -v -E "^($drop) = " "$here/policy.toml" >"$policy"; else cp "$here/policy.toml" "$policy"; fi
"$python" - "$policy" "$payload" <<'PY'
import json, sys
from dockerguard.backends import get_backend
from dockerguard.compiler import compile_policy
from dockerguard.policy import load_policy
ruleset = compile_policy(load_policy(sys.argv[1]), frozenset({("tcp", 8080), ("udp", 5353)}))
json.dump(get_backend("nft").transaction(ruleset).payload, open(sys.argv[2], "w"))
PY
ip netns add "$netns"
nft=(nft)
if [ -n "$root" ]; then cp "$payload" "$root/tmp/dg-payload.json"; nft=(chroot "$root" nft); payload=/tmp/dg-payload.json; fi
ip netns exec "$netns" "${nft[@]}" -j -f "$payload"
{ ip netns exec "$netns" "${nft[@]}" -j list table inet dockerguard
  ip netns exec "$netns" "${nft[@]}" -j list table inet dockerguard_bans; } |
  "$python" -c 'import json, sys; items = [i for line in sys.stdin for i in json.loads(line)["nftables"]]
json.dump({"nftables": items}, open(sys.argv[1], "w"), separators=(",", ":"))' "$here/nft-$version.json"

#!/usr/bin/env bash
# Median of N `coat migrate --json` of the sample container (edge-1 <-> edge-2)
# on a fresh lab: the figures quoted in the issues' closing notes.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10}
export COAT_LAB=${COAT_LAB:-median}
trap 'bin/coat lab down >/dev/null 2>&1 || true' EXIT
bin/coat lab down >/dev/null 2>&1 || true
bin/coat lab up >/dev/null
bin/coat run --host edge-1 --name med --image sample -- /bin/coat-sample server >/dev/null
sleep 1
out=$(mktemp)
to=edge-2
for i in $(seq "$N"); do
  bin/coat migrate med --to $to --json >>"$out"
  [ $to = edge-2 ] && to=edge-1 || to=edge-2
done
python3 - "$out" <<'PY'
import json, statistics, sys
rs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
keys = ["checkpoint_ms", "transfer_ms", "restore_ms", "total_ms", "downtime_ms", "bytes"]
print(f"median of {len(rs)} migrations of the sample container (strategy {rs[0].get('strategy')}):")
print(f"  first migration downtime {rs[0]['downtime_ms']:.1f} ms")
for k in keys:
    print(f"  {k:14s} {statistics.median(r[k] for r in rs):10.1f}   (min {min(r[k] for r in rs):.1f}, max {max(r[k] for r in rs):.1f})")
PY
rm -f "$out"

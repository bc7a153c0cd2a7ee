#!/usr/bin/env bash
# One migration of a fresh sample container under N connections (each
# sending a line every 100 ms), on a lab of its own: downtime and phases
# from `coat migrate --json`, and each connection's longest wait from the
# client (coat-sample conns). Usage: scripts/conns-migrate.sh N [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}; RUNS=${2:-3}
export COAT_LAB=${COAT_LAB:-conns}
trap 'bin/coat lab down >/dev/null 2>&1 || true' EXIT
bin/coat lab down >/dev/null 2>&1 || true
bin/coat lab up >/dev/null
for i in $(seq "$RUNS"); do
  bin/coat run --host edge-1 --name "c$i" --image sample -- /bin/coat-sample server >/dev/null
  ip=$(bin/coat ps --json | python3 -c "import json,sys; print([c['ip'] for c in json.load(sys.stdin) if c['name']=='c$i'][0])")
  sleep 1
  out=$(mktemp)
  bin/coat lab exec client -- bin/coat-sample conns --addr "$ip:7000" --conns "$N" --duration 12s --json >"$out" 2>/dev/null &
  cl=$!
  sleep 5
  m=$(bin/coat migrate "c$i" --to edge-2 --json)
  wait $cl || true
  python3 - "$out" "$m" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); m = json.loads(sys.argv[2])
print(f"conns {c['conns']:5d} survived {c['survived']:5d}  downtime {m['downtime_ms']:7.1f} ms (checkpoint {m['checkpoint_ms']:.0f}, transfer {m['transfer_ms']:.0f}, restore {m['restore_ms']:.0f}, {m['bytes']/1e6:.1f} MB)  max stall {c['max_stall_ms']:7.1f} ms, p99 {c['stall_p99_ms']:.1f}")
PY
  rm -f "$out"
  bin/coat rm "c$i" >/dev/null
done

#!/usr/bin/env bash
# The COAT demo: a lab with two edge hosts and a mobile client; the client
# streams to the sample service while it live-migrates edge-1 -> edge-2 ->
# edge-1; then the report. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
COAT=bin/coat
SAMPLE=$PWD/bin/coat-sample
export COAT_LAB=${COAT_LAB:-demo}
out=$(mktemp -d)
trap '$COAT lab down >/dev/null 2>&1 || true; rm -rf "$out"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Checking this machine"
$COAT doctor || { echo "coat doctor found a problem: see above"; exit 1; }

step "Bringing up the lab (2 edge hosts, 1 client)"
$COAT lab down >/dev/null 2>&1 || true
$COAT lab up --hosts 2
$COAT hosts

step "Running the sample service on edge-1"
$COAT run --host edge-1 --name web --image sample -- /bin/coat-sample server
ip=$($COAT ps --json | python3 -c 'import json,sys; print([c["ip"] for c in json.load(sys.stdin) if c["name"]=="web"][0])')
for i in $(seq 50); do $COAT lab exec client -- "$SAMPLE" ctl --addr "$ip:7001" ping >/dev/null 2>&1 && break; sleep 0.1; done
$COAT lab exec client -- "$SAMPLE" ctl --addr "$ip:7001" put note "written-on-edge-1" >/dev/null
$COAT ps

step "Client streams to $ip over the overlay; the service moves twice under it"
$COAT lab exec client -- "$SAMPLE" stream --addr "$ip:7000" --duration 8s --rate 2MB/s --json >"$out/stream.json" &
stream=$!
sleep 2
$COAT migrate web --to edge-2 --json | tee "$out/m1.json" >/dev/null
$COAT ps
sleep 2
$COAT migrate web --to edge-1 --json | tee "$out/m2.json" >/dev/null
wait $stream || true

step "Report"
python3 - "$out" <<'PY'
import json, sys, os
d = sys.argv[1]
for f in ("m1.json", "m2.json"):
    m = json.load(open(os.path.join(d, f)))
    print(f"migration {m['from']} -> {m['to']}: checkpoint {m['checkpoint_ms']:.0f} ms, transfer {m['transfer_ms']:.0f} ms, "
          f"restore {m['restore_ms']:.0f} ms, total {m['total_ms']:.0f} ms, downtime {m['downtime_ms']:.0f} ms, {m['bytes']} bytes")
s = json.load(open(os.path.join(d, "stream.json")))
ok = s["connection_error"] == "" and s["errors"] == 0 and s["sent"] == s["received"]
print(f"client stream: sent {s['sent']} bytes, echoed back {s['received']}, mismatches {s['errors']}, "
      f"longest stall {s['max_gap_ms']:.0f} ms, connection {'kept' if ok else 'BROKEN: ' + s['connection_error']}")
sys.exit(0 if ok else 1)
PY
echo "file written before the moves: $($COAT lab exec client -- "$SAMPLE" ctl --addr "$ip:7001" get note)"
echo "server: $($COAT lab exec client -- "$SAMPLE" ctl --addr "$ip:7001" stats)"

step "Tearing the lab down"
$COAT lab down
trap 'rm -rf "$out"' EXIT

#!/usr/bin/env bash
# Interleaved A/B of the sample container's migration between builds of
# coat: one lab per build (all up at once, so each sees the same machine),
# then N rounds of one `coat migrate --json` (edge-1 <-> edge-2) per build
# in turn; prints each build's medians. Usage:
#   scripts/ab-migrate.sh N NAME=PATH/TO/bin/coat NAME=PATH/TO/bin/coat ...
# e.g. a build of the commit before a change in a git worktree against
# this tree's bin/coat. MIGRATE_ARGS adds flags to every migrate (e.g.
# MIGRATE_ARGS="--strategy post-copy").
set -euo pipefail
N=${1:?usage: $0 N NAME=BIN ... (NAME: up to 6 lowercase letters and digits)}; shift
names=(); bins=()
for a in "$@"; do names+=("${a%%=*}"); bins+=("${a#*=}"); done
out=$(mktemp)
down() { for i in "${!names[@]}"; do "${bins[$i]}" --lab "ab${names[$i]}" lab down >/dev/null 2>&1 || true; done; rm -f "$out"; }
trap down EXIT
for i in "${!names[@]}"; do
  "${bins[$i]}" --lab "ab${names[$i]}" lab up --hosts 2 >/dev/null
  "${bins[$i]}" --lab "ab${names[$i]}" run --host edge-1 --name ab --image sample -- /bin/coat-sample server >/dev/null
done
sleep 1
for r in $(seq "$N"); do
  to=$([ $((r % 2)) = 1 ] && echo edge-2 || echo edge-1)
  for i in "${!names[@]}"; do
    printf '%s ' "${names[$i]}" >>"$out"
    "${bins[$i]}" --lab "ab${names[$i]}" migrate ab --to "$to" --json ${MIGRATE_ARGS:-} | tr -d '\n' >>"$out"
    echo >>"$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, _, js = line.partition(" ")
    rows.setdefault(name, []).append(json.loads(js))
for name, rs in rows.items():
    med = lambda k: statistics.median(r[k] for r in rs)
    dts = sorted(r["downtime_ms"] for r in rs)
    print(f"{name:12s} {len(rs)} migrations, medians: checkpoint {med('checkpoint_ms'):.1f} ms, transfer {med('transfer_ms'):.1f}, "
          f"restore {med('restore_ms'):.1f}, downtime {med('downtime_ms'):.1f} (p90 {dts[int(len(dts) * 0.9) - 1]:.1f}) ms")
PY

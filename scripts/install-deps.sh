#!/usr/bin/env bash
# Installs COAT's host dependencies on Debian 12 (bookworm). Idempotent; run as root.
#
#  * Debian 12 packages: runc 1.1.5, network tools, traffic generators, and
#    redis-server (the bench's memory workload; its service is not started).
#  * Podman and an OpenSSH server for the bench's podman mode (the paper
#    artifact's own path: podman checkpoint, scp, podman restore). The bench
#    starts its own sshd on a lab node's underlay address; the host's ssh
#    service is stopped and disabled if this script installed it.
#  * CRIU >= 4.2: Debian 12's criu 3.17 cannot work on kernels >= 6.13 (vDSO
#    layout) and CRIU < 4.2 cannot dump TCP sockets on kernels >= 6.16. Debian
#    unstable's criu 4.2 works but needs a newer libc, so its .debs and the
#    libraries they need are unpacked into a private prefix (never over the
#    system libc) and /usr/local/bin/criu runs it through that prefix's loader.
#    runc and go-criu exec `criu` from PATH, so they pick up the wrapper.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

APT_PKGS=(runc iproute2 nftables iptables iperf3 sockperf redis-server tcpdump busybox-static ca-certificates)
# Installed with their recommended packages (Podman's network backend).
PODMAN_PKGS=(podman openssh-server openssh-client)
CRIU_MIN=4.2
PREFIX=/opt/coat/criu
WRAPPER=/usr/local/bin/criu
CACHE=/var/cache/coat-deps            # downloaded .debs, reused when PREFIX is rebuilt
MANIFEST=$CACHE/criu-debs.txt         # the .deb set of the last complete download
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log()  { printf '%-16s %s\n' "$1" "$2"; }
die()  { printf 'install-deps: ERROR: %s\n' "$*" >&2; exit 1; }
CHANGED=0                             # set to 1 when anything was installed

[[ $(id -u) -eq 0 ]] || die "must run as root"

# --- Debian 12 packages --------------------------------------------------------
is_installed() { [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]; }

install_apt_pkgs() {  # $1: --no-install-recommends or "", then the packages
  local recommends=$1; shift
  local missing=() p
  for p in "$@"; do is_installed "$p" || missing+=("$p"); done
  if ((${#missing[@]} == 0)); then log apt-packages "present ($*)"; return; fi
  log apt-packages "installing: ${missing[*]}"
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq $recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
  for p in "${missing[@]}"; do is_installed "$p" || die "package $p did not install"; done
  log apt-packages "installed: ${missing[*]}"; CHANGED=1
  for p in "${missing[@]}"; do [[ $p == openssh-server ]] && SSH_NEW=1; done
  return 0
}
SSH_NEW=0

# Installing openssh-server starts the host's sshd on every address; the
# bench needs only the binary (it runs its own, on one lab address), so a
# service this script brought in is stopped and disabled.
quiet_ssh_service() {
  ((SSH_NEW)) || return 0
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now --quiet ssh.service ssh.socket >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/ssh ]]; then
    /etc/init.d/ssh stop >/dev/null 2>&1 || true
    update-rc.d ssh disable >/dev/null 2>&1 || true
  fi
  log openssh-server "host service stopped and disabled (the bench runs its own sshd in the lab)"
}

# Debian starts redis-server's own service on install; the lab runs redis in
# containers only, so the host's service is stopped and disabled (systemd only).
quiet_redis_service() {
  [[ -d /run/systemd/system ]] || return 0
  systemctl is-enabled --quiet redis-server 2>/dev/null || systemctl is-active --quiet redis-server 2>/dev/null || return 0
  systemctl disable --now --quiet redis-server >/dev/null 2>&1 || true
  log redis-server "host service stopped and disabled (the lab runs redis in containers)"
}

# --- CRIU ----------------------------------------------------------------------
# True if `criu` on PATH is >= CRIU_MIN and its own kernel check passes.
criu_ok() {
  local v
  command -v criu >/dev/null || return 1
  v=$(criu --version 2>/dev/null | sed -n 's/^Version: *//p')
  [[ -n $v && $(printf '%s\n%s\n' "$CRIU_MIN" "$v" | sort -V | head -n1) == "$CRIU_MIN" ]] || return 1
  criu check 2>&1 | grep -q 'Looks good'
}

# The base URI of the Debian mirror this machine's apt already uses for bookworm.
debian_mirror() {
  local codename; codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  apt-get indextargets --no-release-info --format '$(REPO_URI) $(RELEASE)' \
    | awk -v c="$codename" '$2 == c { print $1; exit }'
}

# apt-get/apt-cache with a private, throw-away config that only knows sid. The
# system's sources, lists and preferences are never touched.
SID_DIR=""
sid_apt() {
  local tool=$1; shift
  "$tool" -o Dir::State="$SID_DIR" -o Dir::State::Lists="$SID_DIR/lists" \
    -o Dir::Cache="$SID_DIR/cache" -o Dir::Etc::SourceList=/dev/null \
    -o Dir::Etc::SourceParts="$SID_DIR/sources" -o Dir::Etc::Preferences=/dev/null \
    -o Dir::Etc::PreferencesParts=/dev/null -o APT::Sandbox::User=root \
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false "$@"
}

sid_update() {  # $1: trust line for the private sid source, $2: mirror URI
  local mirror=$2 out
  cat >"$SID_DIR/sources/sid.sources" <<EOF
Types: deb
URIs: $mirror
Suites: sid
Components: main
$1
EOF
  out=$(sid_apt apt-get update 2>&1) \
    && ! grep -Eq 'NO_PUBKEY|EXPKEYSIG|BADSIG|GPG error|not signed' <<<"$out" && return 0
  grep -E '^(E|W):' <<<"$out" | sort -u | head -n3 >&2; return 1
}

download_criu_debs() {
  local mirror pkgs
  mirror=$(debian_mirror); [[ -n $mirror ]] || die "cannot find the Debian mirror in apt's sources"
  SID_DIR=$(mktemp -d /tmp/coat-sid-apt.XXXXXX); trap 'rm -rf "$SID_DIR"' EXIT
  mkdir -p "$SID_DIR"/{lists/partial,cache/archives/partial,sources}
  log criu "fetching Debian unstable criu from $mirror"
  # sid's Release is signed by Debian's archive keys. If the installed keyring
  # lacks sid's current key, first try a newer debian-archive-keyring from
  # bookworm(-updates); as a last resort trust this private sid list without
  # signature checks (used only to download the few .debs below, from the same
  # mirror the system already trusts; the system apt config is never changed).
  if ! sid_update "Signed-By: $KEYRING" "$mirror"; then
    { apt-get update -qq && apt-get install -y -qq --only-upgrade debian-archive-keyring; } >/dev/null 2>&1 || true
    if ! sid_update "Signed-By: $KEYRING" "$mirror"; then
      echo "install-deps: WARNING: sid signature not verifiable, using Trusted: yes" >&2
      sid_update "Trusted: yes" "$mirror" || die "apt-get update of the private sid list failed"
    fi
  fi
  # Dependency closure of criu in sid (Depends/Pre-Depends only), resolved by apt.
  mapfile -t pkgs < <(sid_apt apt-cache depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances criu | grep -Ev '^( |<)' | sort -u)
  ((${#pkgs[@]} > 1)) || die "could not resolve criu's dependencies in sid"
  mkdir -p "$CACHE"
  (cd "$CACHE" && rm -f ./*.deb && sid_apt apt-get download -qq "${pkgs[@]}") \
    || die "apt-get download of sid packages failed: ${pkgs[*]}"
  (cd "$CACHE" && ls ./*.deb | sed 's|^\./||') >"$MANIFEST"
  rm -rf "$SID_DIR"; trap - EXIT
}

cached_debs_complete() {
  [[ -s $MANIFEST ]] || return 1
  local f; while read -r f; do [[ -f $CACHE/$f ]] || return 1; done <"$MANIFEST"
}

unpack_criu() {
  local tmp=$PREFIX.new f
  rm -rf "$tmp"; mkdir -p "$tmp"
  while read -r f; do dpkg -x "$CACHE/$f" "$tmp" || die "dpkg -x $f failed"; done <"$MANIFEST"
  [[ -x $tmp/usr/sbin/criu ]] || die "criu binary missing after unpacking"
  rm -rf "$PREFIX"; mv "$tmp" "$PREFIX"
}

write_wrapper() {
  local libdirs loader
  loader=$(find "$PREFIX" -name 'ld-linux-x86-64.so.2' -type f | head -n1)
  [[ -n $loader ]] || die "no dynamic loader in $PREFIX"
  libdirs=$(find "$PREFIX" -name '*.so*' -type f -not -path '*/gconv/*' -printf '%h\n' | sort -u | paste -sd:)
  # ld.so --list reports any library that the prefix still lacks.
  if "$loader" --library-path "$libdirs" --list "$PREFIX/usr/sbin/criu" | grep -q 'not found'; then
    die "criu libraries missing in $PREFIX: $("$loader" --library-path "$libdirs" --list "$PREFIX/usr/sbin/criu" | grep 'not found' | tr -s ' \t\n' ' ')"
  fi
  mkdir -p "$(dirname "$WRAPPER")"
  cat >"$WRAPPER.tmp" <<EOF
#!/bin/sh
# Written by COAT scripts/install-deps.sh: Debian unstable's CRIU run with its own
# libc from $PREFIX. exec keeps the pid, argv and every fd (criu swrk FD).
exec $loader --library-path $libdirs --argv0 "\$0" $PREFIX/usr/sbin/criu "\$@"
EOF
  chmod 755 "$WRAPPER.tmp"; mv "$WRAPPER.tmp" "$WRAPPER"
}

# Dump and restore a detached sleep through the wrapper: proves that more than
# `criu check` works (ptrace seizure, restorer blob, pid reuse).
smoke_test_criu() {
  local dir pid i; dir=$(mktemp -d /tmp/coat-criu-test.XXXXXX)
  # Double fork: the sleep must not be our child, or its zombie would keep
  # the pid busy and restore could not reuse it.
  pid=$( (setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!) )
  sleep 0.2
  if ! "$WRAPPER" dump -t "$pid" -D "$dir" --shell-job -o dump.log 2>/dev/null; then
    kill "$pid" 2>/dev/null || true; echo "dump failed, see $dir/dump.log"; return 1
  fi
  # Restore needs the same pid; wait until init has reaped the dumped task.
  for i in $(seq 50); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
  "$WRAPPER" restore -D "$dir" -d --shell-job -o restore.log 2>/dev/null \
    || { echo "restore failed, see $dir/restore.log"; return 1; }
  kill "$pid" 2>/dev/null || { echo "restored process $pid is not running"; return 1; }
  rm -rf "$dir"
}

# A wrapper that failed verification is removed, so that a re-run retries.
criu_failed() { rm -f "$WRAPPER"; die "$@"; }

install_criu() {
  if criu_ok; then log criu "present ($(command -v criu), $(criu --version | sed -n 's/^Version: *//p'))"; return; fi
  if cached_debs_complete; then log criu "unpacking cached .debs from $CACHE"
  else download_criu_debs; fi
  unpack_criu
  write_wrapper
  [[ $(command -v criu) == "$WRAPPER" ]] \
    || criu_failed "$WRAPPER is not the first criu on PATH ($(command -v criu || echo none))"
  criu_ok || criu_failed "installed criu fails 'criu check': $("$WRAPPER" check 2>&1 | tail -n3)"
  local err; err=$(smoke_test_criu) || criu_failed "criu dump/restore smoke test: $err"
  CHANGED=1
  log criu "installed $("$WRAPPER" --version | sed -n 's/^Version: *//p') in $PREFIX (wrapper $WRAPPER), dump/restore OK"
}

install_apt_pkgs --no-install-recommends "${APT_PKGS[@]}"
install_apt_pkgs "" "${PODMAN_PKGS[@]}"
quiet_redis_service
quiet_ssh_service
install_criu
log runc "$(runc --version | head -n1)"
if ((CHANGED)); then echo "install-deps: done"; else echo "install-deps: everything is present"; fi

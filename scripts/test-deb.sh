#!/usr/bin/env bash
# Build the Debian package from this clone and try it as a user would, on a
# throwaway Debian 12:
#
#   ../shared/tools/fresh-debian . -- bash scripts/test-deb.sh
#
#  1. build: the Build-Depends (apt-get build-dep), dpkg-buildpackage -us -uc -b
#  2. lintian on the binary and the source package: any error fails
#  3. back to exactly the packages the system started with, then
#     "apt-get install ./spfmilter_VERSION_all.deb": everything it pulls in
#     must come from Debian's archive, and none of it may be a compiler,
#     headers or pip
#  4. what the package installed: spfmilter --check-config, the conffile,
#     the account, the man pages through man, systemd-analyze verify
#  5. the installed daemon, started with the unit's own ExecStartPre and
#     ExecStart command lines (as root: no systemd runs here), its conffile
#     pointed at the test DNS server on loopback: one pass with its
#     Received-SPF header and one fail rejected, over the milter protocol
#
# It installs and purges packages and starts daemons, so it refuses to run
# anywhere but in fresh-debian's throwaway system (or with --throwaway).
set -euo pipefail

if [[ ! -e /fresh-debian-run && ${1:-} != --throwaway ]]; then
  echo "test-deb: installs and purges packages; run it in ../shared/tools/fresh-debian" >&2
  exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
export DEBIAN_FRONTEND=noninteractive
work=$(mktemp -d /tmp/test-deb.XXXXXX)
pids=()

step() { printf '\n== [%3ds] %s\n' "$SECONDS" "$*"; }
fail() { echo "test-deb: FAILED: $*" >&2; exit 1; }
installed() { dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {print $2}' | sort; }

cleanup() {
  # Only the processes this script started, by PID.
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

# No systemd runs here: maintainer scripts of other packages would start
# their daemons through their init scripts.  Start none, as in a container.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
fi

installed > "$work/base.txt"

step "build dependencies"
apt-get update -qq
apt-get install -y -qq --no-install-recommends dpkg-dev lintian >/dev/null
apt-get build-dep -y -qq --no-install-recommends ./ >/dev/null
version=$(dpkg-parsechangelog -S Version)
deb="$(dirname "$here")/spfmilter_${version}_all.deb"
changes="$(dirname "$here")/spfmilter_${version}_$(dpkg --print-architecture).changes"
echo "spfmilter $version; Debian $(cat /etc/debian_version)"
dpkg-query -W -f='  ${Package} ${Version}\n' debhelper dh-python python3 python3-setuptools \
  python3-milter python3-spf

step "dpkg-buildpackage -us -uc -b"
build_start=$SECONDS
dpkg-buildpackage -us -uc -b > "$work/build.log" 2>&1 || { tail -50 "$work/build.log"; fail "build"; }
grep -E "^dpkg-deb: building|^ dpkg-genchanges" "$work/build.log"
echo "built in $((SECONDS - build_start)) s: $(basename "$deb")"
dpkg-deb -f "$deb" Package Version Architecture Depends
[[ $(dpkg-deb -f "$deb" Architecture) == all ]] || fail "the package is not Architecture: all"
dpkg-deb -c "$deb" | awk '{print "  " $6}' | grep -vE '/spfmilter/[a-z_]+\.py$|/$'

step "lintian (fails on errors)"
debian/rules clean >/dev/null
(cd "$(dirname "$here")" && dpkg-source -b "$(basename "$here")" >/dev/null)
source_dsc="$(dirname "$here")/spfmilter_${version}.dsc"
status=0
lintian --fail-on error --display-info --pedantic "$changes" "$source_dsc" \
  > "$work/lintian.txt" 2>&1 || status=$?
grep -v "running with root privileges" "$work/lintian.txt" || true
for level in E W I P; do
  printf '%s: %d  ' "$level" "$(grep -c "^$level: " "$work/lintian.txt" || true)"
done
echo
[[ $status == 0 ]] || fail "lintian reported errors (status $status)"

step "back to the packages the system started with"
installed > "$work/now.txt"
comm -13 "$work/base.txt" "$work/now.txt" > "$work/build-only.txt"
echo "purging the $(wc -l < "$work/build-only.txt") packages the build installed"
# Each by name, no --autoremove: that could also take packages of the
# fresh system that apt marks as automatically installed.
xargs -a "$work/build-only.txt" apt-get purge -y -qq >/dev/null
installed > "$work/now.txt"
cmp -s "$work/base.txt" "$work/now.txt" || {
  diff "$work/base.txt" "$work/now.txt"
  fail "the package set differs from the fresh system's"
}

step "apt-get install ./$(basename "$deb")"
cp "$deb" /tmp/
local_deb="/tmp/$(basename "$deb")"
# What apt is about to install and where each package comes from: every one
# but spfmilter itself from Debian's archive.
apt-get install -s "$local_deb" | awk '/^Inst /' > "$work/plan.txt"
foreign=$(grep -v '^Inst spfmilter ' "$work/plan.txt" | grep -vE '\((\S+) Debian(-Security)?:12' || true)
[[ -z $foreign ]] || fail "packages from outside Debian's archive: $foreign"
install_start=$SECONDS
apt-get install -y -q "$local_deb" > "$work/install.log" 2>&1 || { cat "$work/install.log"; fail "install"; }
echo "installed in $((SECONDS - install_start)) s; new packages (name version origin):"
installed > "$work/now.txt"
comm -13 "$work/base.txt" "$work/now.txt" > "$work/new.txt"
while read -r package; do
  origin=$(awk -v p="$package" '$2 == p {print $4}' "$work/plan.txt" | tr -d '([')
  printf '  %s %s %s\n' "$package" "$(dpkg-query -W -f='${Version}' "$package")" "${origin:-?}"
done < "$work/new.txt"
echo "$(wc -l < "$work/new.txt") packages"
bad=$(grep -E '^(gcc|g\+\+|cpp|clang|build-essential|python3-pip|python3-dev|python3-venv|libmilter-dev|.*-dev)(-[0-9.]+)?$' "$work/new.txt" || true)
[[ -z $bad ]] || fail "the package pulled in a compiler, headers or pip: $bad"
grep -qx spfmilter "$work/new.txt" || fail "spfmilter is not installed"

step "the installed files"
command -v spfmilter
spfmilter --version
spfmilter --check-config > "$work/check-config.txt"
head -4 "$work/check-config.txt"
spfmilter --check-config --config /etc/spfmilter/spfmilter.cfg >/dev/null
echo "spfmilter --check-config --config /etc/spfmilter/spfmilter.cfg: ok"
dpkg-query -W -f='${Conffiles}\n' spfmilter | grep -q ' /etc/spfmilter/spfmilter.cfg ' ||
  fail "/etc/spfmilter/spfmilter.cfg is not a conffile"
spfmilter --example-config | cmp - /etc/spfmilter/spfmilter.cfg
cmp /etc/spfmilter/spfmilter.cfg /usr/share/spfmilter/spfmilter.cfg
echo "conffile = spfmilter --example-config = /usr/share/spfmilter/spfmilter.cfg"
getent passwd spfmilter
getent group spfmilter
ls -l /lib/systemd/system/spfmilter.service /lib/systemd/system/spfmilter.socket \
  /usr/lib/sysusers.d/spfmilter.conf /usr/share/man/man8/spfmilter.8.gz \
  /usr/share/man/man5/spfmilter.cfg.5.gz /usr/share/doc/spfmilter/README.md.gz
grep -E '^(Documentation|Exec[A-Za-z]*|SyslogFacility)=' /lib/systemd/system/spfmilter.service

# Tools of the tests from here on; what the package pulled is settled.
apt-get install -y -qq --no-install-recommends man-db python3-dnslib python3-yaml >/dev/null
for page in "8 spfmilter" "5 spfmilter.cfg"; do
  # shellcheck disable=SC2086  # section and name
  MANWIDTH=80 man --warnings $page > "$work/man.txt" 2> "$work/man.err"
  [[ ! -s $work/man.err ]] || { cat "$work/man.err"; fail "man $page warns"; }
  echo "man $page: $(wc -l < "$work/man.txt") lines, no warnings; $(grep -m1 -A1 '^NAME' "$work/man.txt" | tail -1 | xargs)"
done
# With man-db present, verify also looks up the Documentation= pages.
SYSTEMD_LOG_COLOR=0 systemd-analyze verify --recursive-errors=no \
  /lib/systemd/system/spfmilter.service > "$work/verify.txt" 2>&1 || { cat "$work/verify.txt"; fail "verify"; }
if grep spfmilter "$work/verify.txt"; then fail "systemd-analyze verify complains"; fi
echo "systemd-analyze verify spfmilter.service: ok"

step "the installed daemon: one pass, one fail"
: > "$work/dns.log"
python3 -m testkit.dnsserver testkit/zones/core.yaml > "$work/dns.log" 2>&1 &
pids+=($!)
deadline=$((SECONDS + 20))
until grep -q '^listening on ' "$work/dns.log"; do
  [[ $SECONDS -lt $deadline ]] || { cat "$work/dns.log"; fail "the test DNS server did not start"; }
  sleep 0.1
done
nameserver=$(sed -n 's/^listening on //p' "$work/dns.log")
echo "test DNS server on $nameserver"
# The conffile, as an administrator would edit it: only the resolver.
[[ $(grep -c '^nameservers =' /etc/spfmilter/spfmilter.cfg) == 1 ]] || fail "no nameservers line"
sed -i "s/^nameservers =.*/nameservers = $nameserver/" /etc/spfmilter/spfmilter.cfg

unit_command() {
  sed -n "s/^$1=//p" /lib/systemd/system/spfmilter.service
}
check_command=$(unit_command ExecStartPre)
start_command=$(unit_command ExecStart)
echo "ExecStartPre: $check_command"
# shellcheck disable=SC2086  # a command line from the unit
$check_command >/dev/null || fail "ExecStartPre"
echo "ExecStart:    $start_command"
# As the unit runs it (StandardOutput=null), but started by root: the daemon
# makes /run/spfmilter and switches to the account spfmilter itself.
# shellcheck disable=SC2086
$start_command > /dev/null 2> "$work/daemon.log" &
daemon=$!
pids+=("$daemon")
socket=/run/spfmilter/spfmilter.sock
deadline=$((SECONDS + 30))
until [[ -S $socket ]]; do
  kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon.log"; fail "the daemon exited"; }
  [[ $SECONDS -lt $deadline ]] || { cat "$work/daemon.log"; fail "no socket after 30 s"; }
  sleep 0.1
done
ls -ld /run/spfmilter "$socket"
uid=$(awk '/^Uid:/ {print $2}' "/proc/$daemon/status")
echo "daemon runs as $(getent passwd "$uid" | cut -d: -f1)"

python3 - "$socket" <<'EOF'
import sys

from testkit.milterclient import MilterClient

socket = f"unix:{sys.argv[1]}"


def transaction(sender):
    with MilterClient(socket) as client:
        client.negotiate()
        client.macros("C", {"j": "mx.example.net"})
        client.connect("client.example", "198.51.100.7")
        client.helo("helo-pass.example.org")
        return client.transaction(f"<{sender}>", ["<user@example.net>"])


passed = transaction("alice@spf-pass.example.org")
headers = [m for m in passed.eom.modifications if m.name == "Received-SPF"] if passed.eom else []
assert passed.final.kind in ("continue", "accept"), passed
assert len(headers) == 1 and headers[0].value.split()[0] == "pass", passed
print(f"pass: {passed.final.kind}; Received-SPF: {' '.join(headers[0].value.split())}")

failed = transaction("mallory@spf-fail.example.org")
reply = failed.rcpts[0][1]
assert reply.kind == "replycode" and reply.text.startswith("550 5.7.23 "), failed
assert failed.eom is None, failed
print(f"fail: rejected at RCPT: {reply.text}")
EOF
grep ' verdict ' "$work/daemon.log"
[[ $(grep -c ' verdict ' "$work/daemon.log") == 2 ]] || fail "expected two verdict lines"
if grep -E '^(WARNING|ERROR|CRITICAL)|Traceback' "$work/daemon.log"; then
  fail "the daemon logged warnings or errors"
fi

spfmilter check --config /etc/spfmilter/spfmilter.cfg --client-ip 198.51.100.7 \
  --helo helo-pass.example.org --sender bob@spf-softfail.example.org | head -4

kill -TERM "$daemon"
# libmilter notices the stop when its listener wakes: a connection wakes it.
deadline=$((SECONDS + 30))
while kill -0 "$daemon" 2>/dev/null; do
  python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.close()' \
    "$socket" 2>/dev/null || true
  [[ $SECONDS -lt $deadline ]] || fail "the daemon did not stop"
  sleep 0.1
done
status=0
wait "$daemon" || status=$?
[[ $status == 0 ]] || { cat "$work/daemon.log"; fail "the daemon exited with $status"; }
echo "SIGTERM: stopped with status 0"
grep -E 'spfmilter (starting|stopped)' "$work/daemon.log"

step "passed"

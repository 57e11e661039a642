#!/usr/bin/env bash
# Set up whatever is missing on a Debian 12 machine (as root), then either
# run the milter on its built-in defaults or run the whole test suite.
#
#   bash scripts/quickstart.sh run [spfmilter options]   # the milter, foreground
#   bash scripts/quickstart.sh test [pytest options]     # lint, types, all tests
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$here/.venv"
mode=${1:-}
[ $# -gt 0 ] && shift

case "$mode" in
  run)  packages=(python3 python3-venv python3-dev gcc libmilter-dev) ;;
  test) packages=(python3 python3-venv python3-dev gcc libmilter-dev postfix m4 systemd procps
                 opendmarc dbconfig-no-thanks spamassassin unbound rsyslog mandoc man-db
                 prometheus publicsuffix opendkim opendkim-tools
                 libxml2-utils) ;;
  *) echo "usage: $0 run|test [options]" >&2; exit 2 ;;
esac

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$package")
done
# The Sendmail test downloads Debian packages: it needs package lists.
if [ "$mode" = test ] && ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
  apt-get update -qq
  updated=1
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "quickstart: installing ${missing[*]}" >&2
  # The tests run their own private Postfix: leave the system one
  # unconfigured and stopped.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  [ -n "${updated:-}" ] || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  # The tests run their own OpenDMARC, Unbound and rsyslog (on loopback or
  # in a private mount namespace), of Prometheus only promtool, and of
  # OpenDKIM only its key and message tools.
  # Packages installed here start system ones (an unconfigured OpenDMARC, a
  # resolver on port 53, a syslog daemon, a Prometheus server on port
  # 9090, an OpenDKIM milter): stop exactly those (by PID file; an init script's stop would
  # end every such process) and disable them, leaving the machine as it was.
  stop_new_service() {  # package, unit, PID file, executable
    [[ " ${missing[*]} " == *" $1 "* ]] || return 0
    if [ -d /run/systemd/system ]; then
      systemctl disable --now --quiet "$2"
    else
      # Debian 12's rsyslog comes without an init script (systemd only).
      if [ -e "/etc/init.d/$1" ]; then
        update-rc.d "$1" disable >/dev/null
      fi
      start-stop-daemon --stop --quiet --oknodo --retry 5 --pidfile "$3" --exec "$4"
    fi
  }
  stop_new_service opendmarc opendmarc.service /run/opendmarc/opendmarc.pid /usr/sbin/opendmarc
  stop_new_service unbound unbound.service /run/unbound.pid /usr/sbin/unbound
  stop_new_service rsyslog rsyslog.service /run/rsyslogd.pid /usr/sbin/rsyslogd
  stop_new_service prometheus prometheus.service /run/prometheus/prometheus.pid /usr/bin/prometheus
  stop_new_service opendkim opendkim.service /run/opendkim/opendkim.pid /usr/sbin/opendkim
fi

stamp="$venv/.installed"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -e "$here[test]" >&2
  touch "$stamp"
fi

cd "$here"
if [ "$mode" = run ]; then
  # The daemon's own account (as systemd/spfmilter.sysusers makes it): it
  # switches to it from root.
  if ! getent passwd spfmilter >/dev/null; then
    useradd --system --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin spfmilter
  fi
  exec "$venv/bin/spfmilter" "$@"
fi
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy" spfmilter testkit tests $(ls -d benchmarks 2>/dev/null)
exec "$venv/bin/python" -m pytest "$@"

#!/usr/bin/env bash
# Storage tests run against real PostgreSQL and MariaDB on 127.0.0.1 (see docs/storage.md).
# On the development and CI machines both are installed; start whichever is not answering.
set -uo pipefail
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! up 5432 && command -v pg_ctlcluster >/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if ! up 3306 && [ -x /usr/sbin/mariadbd ]; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
fi
for _ in $(seq 1 30); do up 5432 && up 3306 && exit 0; sleep 1; done
up 5432 || echo "warning: PostgreSQL is not answering on 127.0.0.1:5432" >&2
up 3306 || echo "warning: MariaDB is not answering on 127.0.0.1:3306" >&2
exit 0

#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis the service tests talk to are up (start them if not).
# On this project's machines both run before a session starts; this only restarts one that stopped.
set -uo pipefail
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! up 5432; then
  echo "[services] starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if ! up 6379; then
  echo "[services] starting Redis" >&2
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
for _ in $(seq 1 30); do
  up 5432 && up 6379 && exit 0
  sleep 1
done
echo "[services] PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) must be running for the service tests" >&2
exit 1

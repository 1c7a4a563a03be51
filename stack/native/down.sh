#!/usr/bin/env bash
# Stops the native stack started by up.sh, whatever state each service is in.
# Data in .stack/data is kept but the Spark executors' scratch folders; --purge deletes it
# all (buckets, database, topics).
set -euo pipefail
# shellcheck source=stack/native/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

purge=false
case "${1:-}" in
  "") ;;
  --purge) purge=true ;;
  *) die "usage: $0 [--purge]" ;;
esac

# Reverse order of up.sh: monitoring, the registry and the worker first, storage last.
stop_pid prometheus
stop_pid mlflow
stop_pid spark-worker
stop_pid spark-master
# The executors' folders are scratch: the jars they fetched and their logs.
rm -rf "$DATA"/spark/app-*
stop_pid kafka

# PostgreSQL: a fast shutdown through pg_ctl (it finds the server from its data folder),
# else the generic stop.
pgctl=(runuser -u postgres -- env -C / "$(pg_bin)/pg_ctl" -D "$DATA/postgres")
if [[ -n $(pg_bin) && -f $DATA/postgres/postmaster.pid ]] && "${pgctl[@]}" status >/dev/null 2>&1 &&
  "${pgctl[@]}" -m fast -w -t 60 stop >/dev/null 2>&1; then
  rm -f "$RUN/postgres.pid"
  log "postgres: stopped"
else
  stop_pid postgres
fi

stop_pid s3proxy

if $purge; then
  rm -rf "$DATA"
  log "removed $DATA"
fi

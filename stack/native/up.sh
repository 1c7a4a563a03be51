#!/usr/bin/env bash
# Starts the services of the `stack` profile natively on loopback, without Docker:
# S3 (S3Proxy), PostgreSQL, Kafka (KRaft), a Spark standalone master with one worker and
# the MLflow tracking server (from .venv-mlflow: `make mlflow-env`), and Prometheus, which
# scrapes the scoring service on SERVING_PORT whenever it runs there.
# Ports and credentials come from .env. Safe to rerun: running services are only checked.
# Data, logs and pids live in .stack/ (data/, logs/, run/); stop with down.sh.
set -euo pipefail
# shellcheck source=stack/native/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

S3PROXY_VERSION=4.1.0
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
NATIVE="$ROOT/stack/native"
KAFKA_POM="$NATIVE/kafka/pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM")"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"

if [[ ! -f $ROOT/.env ]]; then
  cp "$ROOT/.env.example" "$ROOT/.env"
  log "created .env from .env.example; change its secrets there"
fi
load_env
for var in S3_ENDPOINT S3_ACCESS_KEY S3_SECRET_KEY PGHOST PGPORT PGDATABASE POSTGRES_PASSWORD \
  FEATURES_WRITER_USER FEATURES_WRITER_PASSWORD FEATURES_READER_USER FEATURES_READER_PASSWORD \
  KAFKA_BOOTSTRAP_SERVERS SPARK_MASTER_URL SPARK_MASTER_WEBUI_PORT SPARK_WORKER_WEBUI_PORT \
  MLFLOW_TRACKING_URI MLFLOW_DB MLFLOW_DB_USER MLFLOW_DB_PASSWORD SERVING_PORT PROMETHEUS_PORT; do
  [[ -n ${!var:-} ]] || die "$var is not set: add it to .env (see .env.example)"
done
[[ -x $PY ]] || die "no Python at $PY: run 'make setup' first (or set STACK_PYTHON)"
[[ -x $MLFLOW_BIN ]] || die "no MLflow server at $MLFLOW_BIN: run 'make mlflow-env' first"
mkdir -p "$JARS" "$DATA" "$LOGS" "$RUN" "$CONF"

# Debian packages this needs; docker-compose is only used to validate the compose file.
install_packages() {
  local pkgs=()
  [[ -n $(pg_bin) ]] || pkgs+=(postgresql)
  command -v docker-compose >/dev/null || pkgs+=(docker-compose)
  command -v java >/dev/null || pkgs+=(openjdk-17-jdk-headless)
  command -v mvn >/dev/null || pkgs+=(maven)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v prometheus >/dev/null || pkgs+=(prometheus)
  ((${#pkgs[@]})) || return 0
  ((EUID == 0)) || die "installing ${pkgs[*]} needs root: install them, then rerun"
  log "installing ${pkgs[*]} (apt-get; log in $LOGS/apt.log)"
  # No recommends: docker-compose would otherwise bring a Docker engine.
  { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"; } \
    >>"$LOGS/apt.log" 2>&1 || die "apt-get failed; see $LOGS/apt.log"
  # Debian's package starts a cluster of its own on 5432; this stack runs its own server.
  if [[ " ${pkgs[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null; then
    local ver name _
    while read -r ver name _; do
      pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
      echo manual >"/etc/postgresql/$ver/$name/start.conf"
    done < <(pg_lsclusters -h)
  fi
  # The same for Debian's Prometheus service, where systemd runs one.
  if [[ " ${pkgs[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
}

# Jars from Maven Central, kept in .stack/jars (Maven's own cache is ~/.m2).
fetch_jars() {
  local s3jar="$JARS/s3proxy/s3proxy-$S3PROXY_VERSION-jar-with-dependencies.jar"
  if [[ ! -s $s3jar ]]; then
    log "downloading S3Proxy $S3PROXY_VERSION (Maven; log in $LOGS/maven.log)"
    (cd "$STACK" && mvn -q -B "$DEPENDENCY_PLUGIN:copy" \
      -Dartifact="org.gaul:s3proxy:$S3PROXY_VERSION:jar:jar-with-dependencies" \
      -DoutputDirectory="$JARS/s3proxy") >>"$LOGS/maven.log" 2>&1 ||
      die "could not download S3Proxy; see $LOGS/maven.log"
  fi
  # Kafka's jars are copied again whenever the pom changes.
  local stamp="$JARS/kafka/.pom.sha256" sum
  sum="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
  if [[ ! -f $stamp || $(<"$stamp") != "$sum" ]]; then
    log "downloading Kafka $KAFKA_VERSION (Maven; log in $LOGS/maven.log)"
    rm -rf "$JARS/kafka"
    mvn -q -B -f "$KAFKA_POM" "$DEPENDENCY_PLUGIN:copy-dependencies" -DincludeScope=runtime \
      -DoutputDirectory="$JARS/kafka" >>"$LOGS/maven.log" 2>&1 ||
      die "could not download Kafka's jars; see $LOGS/maven.log"
    echo "$sum" >"$stamp"
  fi
}

# Fail clearly when a port is held by something that is not this stack.
ensure_free() {
  if port_open "$2" "$3"; then
    die "$1: $2:$3 is already in use by another program; stop it or change the port in .env"
  fi
}

# " (already running)" when the service NAME needs no start, else nothing.
started_note() { running_pid "$1" >/dev/null && printf ' (already running)'; return 0; }

# --- S3: S3Proxy with its filesystem backend --------------------------------------------
s3_ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$S3_ENDPOINT/") != 000 ]]; }

# Creates the missing buckets and prints their names, which come from the library, the
# one place that defines them.
make_buckets() {
  "$PY" - <<'EOF'
import os
from urllib.parse import urlparse

from minio import Minio

from workbook.names import BUCKETS

url = urlparse(os.environ["S3_ENDPOINT"])
s3 = Minio(url.netloc, os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"],
           secure=url.scheme == "https")
for bucket in BUCKETS:
    if not s3.bucket_exists(bucket):
        s3.make_bucket(bucket)
print(" ".join(BUCKETS))
EOF
}

start_s3() {
  local host port note
  host="$(url_host "$S3_ENDPOINT")" port="$(url_port "$S3_ENDPOINT")"
  note="$(started_note s3proxy)"
  if [[ -z $note ]]; then
    ensure_free S3 "$host" "$port"
    mkdir -p "$DATA/s3"
    # The credentials sit in a file only the owner can read, rewritten from .env each start.
    (umask 077 && cat >"$CONF/s3proxy.properties" <<EOF
s3proxy.endpoint=$S3_ENDPOINT
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=$S3_ACCESS_KEY
s3proxy.credential=$S3_SECRET_KEY
jclouds.provider=filesystem-nio2
jclouds.filesystem.basedir=$DATA/s3
EOF
    )
    spawn s3proxy java -Xmx512m \
      -jar "$JARS/s3proxy/s3proxy-$S3PROXY_VERSION-jar-with-dependencies.jar" \
      --properties "$CONF/s3proxy.properties"
  fi
  wait_for "S3 (S3Proxy)" s3proxy "$LOGS/s3proxy.log" s3_ready
  local buckets
  buckets="$(make_buckets)" || die "could not create the buckets at $S3_ENDPOINT"
  log "S3 (S3Proxy $S3PROXY_VERSION): ready at $S3_ENDPOINT, buckets $buckets$note"
}

# --- PostgreSQL from Debian's packages, run by the postgres OS user ----------------------
start_postgres() {
  local bin pgdata="$DATA/postgres" sock="$RUN/postgres" note pwfile="$RUN/postgres.pw"
  bin="$(pg_bin)"
  [[ -n $bin ]] || die "PostgreSQL binaries not found under /usr/lib/postgresql"
  id postgres >/dev/null 2>&1 || die "no 'postgres' OS user (Debian's postgresql package makes it)"
  mkdir -p "$pgdata" "$sock"
  chown postgres:postgres "$pgdata" "$sock"
  chmod 700 "$pgdata"
  touch "$LOGS/postgres.log"
  chown postgres "$LOGS/postgres.log"
  runuser -u postgres -- test -w "$pgdata" ||
    die "the postgres OS user cannot reach $pgdata (check the permissions of its parent folders)"
  if [[ ! -f $pgdata/PG_VERSION ]]; then
    # The superuser's password goes through a private file, never a command line.
    (umask 077 && printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile")
    chown postgres "$pwfile"
    local ok=true
    runuser -u postgres -- "$bin/initdb" -D "$pgdata" -U postgres --pwfile="$pwfile" \
      --auth-local=peer --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
      >>"$LOGS/postgres.log" 2>&1 || ok=false
    rm -f "$pwfile"
    $ok || die "initdb failed; see $LOGS/postgres.log"
  fi
  note="$(started_note postgres)"
  if [[ -z $note ]]; then
    ensure_free PostgreSQL "$PGHOST" "$PGPORT"
    # TCP on PGHOST only; the socket lives in .stack/run/postgres for local admin work.
    runuser -u postgres -- "$bin/pg_ctl" -D "$pgdata" -l "$LOGS/postgres.log" -w -t "$TIMEOUT" \
      -o "-c listen_addresses=$PGHOST -p $PGPORT -k $sock" start >/dev/null ||
      die "PostgreSQL did not start; see $LOGS/postgres.log"
    head -n 1 "$pgdata/postmaster.pid" >"$RUN/postgres.pid"
  fi
  wait_for PostgreSQL postgres "$LOGS/postgres.log" "$bin/pg_isready" -q -h "$PGHOST" -p "$PGPORT"
  # Admin work over the socket as the postgres OS user: superuser password from .env, then
  # the feature store's database and roles (the same script the postgres image runs).
  local admin=(runuser -u postgres -- env -C / PGHOST="$sock" PGPORT="$PGPORT")
  if ! "${admin[@]}" psql -X -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'; then
\getenv pw POSTGRES_PASSWORD
ALTER ROLE postgres PASSWORD :'pw';
SQL
    die "could not set the superuser's password"
  fi
  "${admin[@]}" bash "$ROOT/stack/postgres/init.sh" >/dev/null ||
    die "stack/postgres/init.sh failed (its error is above)"
  local version
  version="$("$bin/postgres" -V | awk '{print $3}')"
  log "PostgreSQL $version: ready at $PGHOST:$PGPORT, database $PGDATABASE$note"
}

# --- Kafka in KRaft mode: one node that is broker and controller ------------------------
kafka_tool() {
  java -Xmx256m -Dlog4j2.configurationFile="$NATIVE/kafka/tools-log4j2.properties" \
    -cp "$JARS/kafka/*" "$@"
}
topics() {
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" "$@"
}

start_kafka() {
  local first="${KAFKA_BOOTSTRAP_SERVERS%%,*}" host port props="$CONF/kafka.properties" note topic
  host="$(url_host "$first")" port="$(url_port "$first")"
  topic="$("$PY" -c 'from workbook.names import TRANSACTIONS_TOPIC; print(TRANSACTIONS_TOPIC)')"
  cat >"$props" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$host:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$host:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA/kafka
num.partitions=3
# A single node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  # KRaft needs its log folder formatted once, with a cluster id.
  if [[ ! -f $DATA/kafka/meta.properties ]]; then
    local id
    id="$(kafka_tool kafka.tools.StorageTool random-uuid)"
    kafka_tool kafka.tools.StorageTool format --cluster-id "$id" --config "$props" \
      >>"$LOGS/kafka.log" 2>&1 || die "formatting Kafka's storage failed; see $LOGS/kafka.log"
  fi
  note="$(started_note kafka)"
  if [[ -z $note ]]; then
    ensure_free Kafka "$host" "$port"
    ensure_free "Kafka controller" "$host" "$KAFKA_CONTROLLER_PORT"
    spawn kafka java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$NATIVE/kafka/log4j2.properties" \
      -cp "$JARS/kafka/*" kafka.Kafka "$props"
  fi
  wait_for Kafka kafka "$LOGS/kafka.log" port_open "$host" "$port"
  wait_for Kafka kafka "$LOGS/kafka.log" topics --list
  if ! topics --list 2>/dev/null | grep -qxF "$topic"; then
    topics --create --if-not-exists --topic "$topic" --partitions 3 --replication-factor 1 \
      >>"$LOGS/kafka.log" 2>&1 || die "could not create topic $topic; see $LOGS/kafka.log"
  fi
  log "Kafka $KAFKA_VERSION (KRaft): ready at $KAFKA_BOOTSTRAP_SERVERS, topic $topic$note"
}

# --- Spark standalone master and one worker from the venv's pyspark ---------------------
spark_up() {
  local ui="$1" want="$2"
  curl -fsS "$ui/json/" | "$PY" -c '
import json, sys
alive = sum(w["state"] == "ALIVE" for w in json.load(sys.stdin)["workers"])
sys.exit(alive < int(sys.argv[1]))' "$want"
}

start_spark() {
  local rest="${SPARK_MASTER_URL#spark://}" host port ui note spark_home
  host="${rest%:*}" port="${rest##*:}" ui="http://$host:$SPARK_MASTER_WEBUI_PORT"
  spark_home="$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
  mkdir -p "$DATA/spark"
  # Each application's executor gets its own copy of the packages' jars in the worker's
  # work dir (750 MB, most of it the AWS SDK): folders of finished applications go a
  # minute after they end, not after Spark's default of seven days.
  printf '%s\n' "spark.worker.cleanup.enabled true" "spark.worker.cleanup.interval 60" \
    "spark.worker.cleanup.appDataTtl 60" >"$CONF/spark.conf"
  # SPARK_LOCAL_IP also binds the web UIs to loopback. The properties file puts a path
  # under .stack on the command line, which is how running_pid recognises these processes.
  local run=(env SPARK_HOME="$spark_home" SPARK_LOCAL_IP="$host" PYSPARK_PYTHON="$PY"
    "$spark_home/bin/spark-class")
  note="$(started_note spark-master)"
  if [[ -z $note ]]; then
    ensure_free "Spark master" "$host" "$port"
    ensure_free "Spark master UI" "$host" "$SPARK_MASTER_WEBUI_PORT"
    spawn spark-master "${run[@]}" org.apache.spark.deploy.master.Master \
      --properties-file "$CONF/spark.conf" --host "$host" --port "$port" \
      --webui-port "$SPARK_MASTER_WEBUI_PORT"
  fi
  wait_for "Spark master" spark-master "$LOGS/spark-master.log" spark_up "$ui" 0
  if ! running_pid spark-worker >/dev/null; then
    note=""
    ensure_free "Spark worker UI" "$host" "$SPARK_WORKER_WEBUI_PORT"
    spawn spark-worker "${run[@]}" org.apache.spark.deploy.worker.Worker \
      --properties-file "$CONF/spark.conf" --host "$host" --webui-port "$SPARK_WORKER_WEBUI_PORT" \
      --cores "${SPARK_WORKER_CORES:-$(nproc)}" --memory "${SPARK_WORKER_MEMORY:-4g}" \
      --work-dir "$DATA/spark" "$SPARK_MASTER_URL"
  fi
  wait_for "Spark worker" spark-worker "$LOGS/spark-worker.log" spark_up "$ui" 1
  local version
  version="$("$PY" -c 'import pyspark; print(pyspark.__version__)')"
  log "Spark $version standalone: ready at $SPARK_MASTER_URL, 1 worker alive, UI $ui$note"
}

# --- MLflow tracking server: runs and the registry in PostgreSQL, artifacts in S3 --------
mlflow_ready() { curl -fsS "$MLFLOW_TRACKING_URI/health" >/dev/null; }

start_mlflow() {
  local host port note models
  host="$(url_host "$MLFLOW_TRACKING_URI")" port="$(url_port "$MLFLOW_TRACKING_URI")"
  models="$("$PY" -c 'from workbook.names import MODEL; print(f"s3://{MODEL.bucket}/{MODEL.name}")')"
  note="$(started_note mlflow)"
  if [[ -z $note ]]; then
    ensure_free MLflow "$host" "$port"
    mkdir -p "$DATA/mlflow"
    # Credentials reach the server through its environment, never its command line. The
    # server keeps artifacts under s3://models-bucket/financial_fraud_model and serves them.
    # Its job runner (eight worker processes, for GenAI evaluation jobs) is not needed here.
    MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://$MLFLOW_DB_USER:$MLFLOW_DB_PASSWORD@$PGHOST:$PGPORT/$MLFLOW_DB" \
      MLFLOW_S3_ENDPOINT_URL="$S3_ENDPOINT" AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" \
      AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" AWS_DEFAULT_REGION=us-east-1 \
      MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
      spawn mlflow "$MLFLOW_BIN" server --host "$host" --port "$port" --workers 1 \
      --serve-artifacts --artifacts-destination "$models" \
      --uvicorn-opts "--app-dir $DATA/mlflow"
  fi
  wait_for "MLflow" mlflow "$LOGS/mlflow.log" mlflow_ready
  local version
  version="$("$MLFLOW_BIN" --version | awk '{print $NF}')"
  log "MLflow $version: ready at $MLFLOW_TRACKING_URI, artifacts in $models$note"
}

# --- Prometheus (Debian's package): the scoring service and the alert rules ---------------
prometheus_ready() { curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null; }

start_prometheus() {
  local note
  note="$(started_note prometheus)"
  if [[ -z $note ]]; then
    ensure_free Prometheus 127.0.0.1 "$PROMETHEUS_PORT"
    mkdir -p "$DATA/prometheus"
    # As stack/prometheus/prometheus.yml, on loopback, and scraped every 2 s so that the
    # tests see a request within seconds.
    cat >"$CONF/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  evaluation_interval: 10s
rule_files:
  - $ROOT/stack/prometheus/alerts.yml
scrape_configs:
  - job_name: fraud-scoring
    static_configs:
      - targets: ["127.0.0.1:$SERVING_PORT"]
EOF
    spawn prometheus prometheus --config.file="$CONF/prometheus.yml" \
      --storage.tsdb.path="$DATA/prometheus" --storage.tsdb.retention.time=7d \
      --web.listen-address="127.0.0.1:$PROMETHEUS_PORT"
  fi
  wait_for Prometheus prometheus "$LOGS/prometheus.log" prometheus_ready
  local version
  version="$(prometheus --version 2>&1 | awk 'NR == 1 {print $3}')"
  log "Prometheus $version: ready at http://127.0.0.1:$PROMETHEUS_PORT, scraping 127.0.0.1:$SERVING_PORT$note"
}

install_packages
fetch_jars
start_s3
start_postgres
start_kafka
start_spark
start_mlflow
start_prometheus
log "stack is up; logs in $LOGS, stop with stack/native/down.sh"

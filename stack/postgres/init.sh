#!/usr/bin/env bash
# Creates the online feature store: the database, a writer role that owns it and a
# read-only role for lookups; and the MLflow tracking server's database with a role of its
# own, and Airflow's likewise when AIRFLOW_DB_USER is set. Safe to run again: it creates what is missing and resets the passwords from the
# environment.
#
# Used twice:
# - by the postgres image from /docker-entrypoint-initdb.d/ (connected as POSTGRES_USER
#   over the local socket);
# - by stack/native/up.sh, as the postgres OS user over the local socket.
# Connection settings otherwise follow libpq's environment (PGHOST, PGPORT).
#
# Needs: FEATURES_WRITER_USER, FEATURES_WRITER_PASSWORD, FEATURES_READER_USER,
# FEATURES_READER_PASSWORD, MLFLOW_DB_USER, MLFLOW_DB_PASSWORD (MLFLOW_DB, default mlflow);
# for Airflow, AIRFLOW_DB_USER and AIRFLOW_DB_PASSWORD (AIRFLOW_DB, default airflow);
# the feature database is PGDATABASE (or POSTGRES_DB); psql 15 or newer.

# The body runs in a subshell: the image sources scripts that are not executable, and
# this keeps its shell options away from the entrypoint's shell.
init_feature_store() (
  set -euo pipefail
  : "${FEATURES_WRITER_USER:?}" "${FEATURES_WRITER_PASSWORD:?}"
  : "${FEATURES_READER_USER:?}" "${FEATURES_READER_PASSWORD:?}"
  local db="${PGDATABASE:-${POSTGRES_DB:-features}}"

  # Values reach SQL only as psql variables, quoted by psql (:'x' literal, :"x" name);
  # the passwords are read from the environment by psql itself (\getenv), so they never
  # show on a command line.
  local psql=(psql -X -q -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}"
    -v db="$db" -v writer="$FEATURES_WRITER_USER" -v reader="$FEATURES_READER_USER")

  # Roles and the database are created from the maintenance database, which initdb
  # always makes.
  "${psql[@]}" --dbname postgres <<'SQL'
\getenv writer_password FEATURES_WRITER_PASSWORD
\getenv reader_password FEATURES_READER_PASSWORD
SELECT format('CREATE ROLE %I LOGIN', :'writer')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'writer') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'reader')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'reader') \gexec
ALTER ROLE :"writer" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'writer_password';
ALTER ROLE :"reader" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'reader_password';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'writer')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
ALTER DATABASE :"db" OWNER TO :"writer";
-- Only the two roles connect; nobody else gets temporary tables there.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"reader";
SQL

  "${psql[@]}" --dbname "$db" <<'SQL'
ALTER SCHEMA public OWNER TO :"writer";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
-- Tables the writer creates later are readable by the reader without another grant.
ALTER DEFAULT PRIVILEGES FOR ROLE :"writer" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
SQL
  echo "feature store ready: database $db," \
    "writer $FEATURES_WRITER_USER, reader $FEATURES_READER_USER"
)

# A server that owns its database (MLflow's tracking server, Airflow's metadata): no other
# role may connect to it. Arguments: what it is, the database, the owner, and the name of
# the variable that holds the owner's password (passed on to psql in its environment).
init_owned_store() (
  set -euo pipefail
  local what="$1" db="$2" owner="${3:?no owner given}"
  OWNER_PASSWORD="${!4:?$4 is not set}" \
    psql -X -q -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v db="$db" -v owner="$owner" <<'SQL'
\getenv owner_password OWNER_PASSWORD
SELECT format('CREATE ROLE %I LOGIN', :'owner')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner') \gexec
ALTER ROLE :"owner" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_password';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
ALTER DATABASE :"db" OWNER TO :"owner";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
  echo "$what store ready: database $db, owner $owner"
)

init_feature_store
init_owned_store MLflow "${MLFLOW_DB:-mlflow}" "${MLFLOW_DB_USER:-}" MLFLOW_DB_PASSWORD
# Airflow's, where it runs on this server (Compose's airflow service).
if [[ -n ${AIRFLOW_DB_USER:-} ]]; then
  init_owned_store Airflow "${AIRFLOW_DB:-airflow}" "$AIRFLOW_DB_USER" AIRFLOW_DB_PASSWORD
fi

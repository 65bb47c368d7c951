-- Run once by deploy/postgres-entrypoint.sh on an empty data volume: Airflow's metadata
-- database and Hermesflow's store, on one server (as `make up` does, deploy/postgres.py).
CREATE DATABASE airflow;
CREATE DATABASE hermesflow;

-- Run once by the postgres image on an empty volume: the image creates `airflow`
-- (POSTGRES_DB); Hermesflow's store gets its own database on the same server.
CREATE DATABASE hermesflow;

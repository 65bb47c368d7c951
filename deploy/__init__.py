"""Deployment of the whole Hermesflow topology: `docker-compose.yml` (containers) and
`python -m deploy.local` behind `make up` / `make down` (the same services as local processes).

This folder is not part of the `hermesflow` distribution: it is run from a checkout, next to
the `dags/` folder it deploys.
"""

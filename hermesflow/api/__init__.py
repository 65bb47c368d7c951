"""The HTTP API: one FastAPI app (`app.py`) in front of the scheduler actor, served by uvicorn in
a detached Ray actor (`deployment.py`). Importing this package imports nothing: HTTP clients
read `hermesflow.api.models` without FastAPI or Ray."""

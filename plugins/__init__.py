"""The Airflow plugin of Hermesflow (registered through the `airflow.plugins` entry point)."""

"""The Airflow provider of Hermesflow: a DAG of these operators is a Hermesflow application.

Import what you use from its module (`hermesflow.operators.llm_step`, `.tool_step`,
`.program_run`, `.hook`, `.triggers`); this package imports nothing itself, so Airflow's provider
discovery can read `provider.get_provider_info` without loading the operators. See README.md
for the deferral pattern.
"""

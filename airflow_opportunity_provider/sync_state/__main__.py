"""``python -m airflow_opportunity_provider.sync_state``: the ``opportunity-sync`` command line."""

from airflow_opportunity_provider.sync_state.cli import run

if __name__ == "__main__":
    run()

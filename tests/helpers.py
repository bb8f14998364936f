"""Helpers shared by the test modules."""

from __future__ import annotations

from typing import Any


def run_dag_test(dag: Any) -> Any:
    """``dag.test()`` for a DAG defined in a test module rather than a file in the dags folder.

    ``dag.test()`` only finds DAGs by parsing the dags folder, so the DAG is first written to
    the metadata database the way the DAG processor would write it.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder",
            None,
            [LazyDeserializedDAG.from_dag(dag)],
            {},
            None,
            set(),
            session=session,
            files_parsed=set(),
        )
    return dag.test()

"""A mock of both opportunity platforms (v1 signed, v2 OAuth2) with fault injection, for tests,
example DAGs and benchmarks: ``MockCrmServer(MockCrmConfig()).start()`` or
``python -m airflow_opportunity_provider.mock_crm``.
"""

from airflow_opportunity_provider.mock_crm.config import MockCrmConfig
from airflow_opportunity_provider.mock_crm.faults import FaultConfig
from airflow_opportunity_provider.mock_crm.server import MockCrmServer

__all__ = ["FaultConfig", "MockCrmConfig", "MockCrmServer"]

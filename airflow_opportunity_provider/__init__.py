"""Apache Airflow provider for CRM opportunities on the v1 (signed) and v2 (OAuth2) platforms."""

__version__ = "0.1.0"

"""The Opportunity syncs page: an Airflow UI plugin that shows the bulk load's sync states.

The plugin class lives in :mod:`.plugin`; it builds its FastAPI app only when the API server
first calls it, so that every other Airflow process can load the plugin cheaply.
"""

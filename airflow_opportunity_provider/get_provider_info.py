"""What Airflow reads about this provider: its name, hook, connection type and form, plugin and options.

Kept free of imports beyond the standard library: a provider whose ``get_provider_info()``
raises breaks every ``airflow`` command.
"""

from __future__ import annotations

from typing import Any

_PASSWORD = {"type": ["string", "null"], "format": "password"}
_TEXT = {"type": ["string", "null"]}


def get_provider_info() -> dict[str, Any]:
    """Return the provider metadata dict that Airflow's providers manager loads."""
    return {
        "package-name": "airflow-opportunity-provider",
        "name": "Opportunity CRM",
        "description": "CRM opportunities: the signed v1 add-or-update API and the OAuth2 v2 put API.",
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": "Opportunity CRM",
                "external-doc-url": "https://github.com/airflow-opportunity-provider/airflow-opportunity-provider",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Opportunity CRM",
                "python-modules": ["airflow_opportunity_provider.hooks.opportunity"],
            }
        ],
        "operators": [
            {
                "integration-name": "Opportunity CRM",
                "python-modules": ["airflow_opportunity_provider.operators.opportunity"],
            }
        ],
        "transfers": [
            {
                "source-integration-name": "Common SQL",
                "target-integration-name": "Opportunity CRM",
                "python-module": "airflow_opportunity_provider.transfers.sql_to_opportunity",
            }
        ],
        "plugins": [
            {
                "name": "opportunity_syncs",
                "plugin-class": "airflow_opportunity_provider.plugins.plugin.OpportunitySyncsPlugin",
            }
        ],
        "config": {
            "opportunity_crm": {
                "description": "Options of the Opportunity CRM provider.",
                "options": {
                    "state_conn_ids": {
                        "description": (
                            "Comma-separated ids of the SQL connections whose sync states (the "
                            "`state_conn_id` of SqlToOpportunityOperator) the Opportunity syncs page "
                            "shows. The local SQLite state, $AIRFLOW_HOME/opportunity_sync/state.db, "
                            "is always shown."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "sync_state_pg,warehouse_state",
                        "default": "",
                    }
                },
            }
        },
        "connection-types": [
            {
                "connection-type": "opportunity_crm",
                "hook-class-name": "airflow_opportunity_provider.hooks.opportunity.OpportunityHook",
                "hook-name": "Opportunity CRM",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "extra"],
                    "relabeling": {
                        "host": "v1 Platform Address",
                        "port": "v1 Port",
                        "login": "v1 API Key",
                        "password": "v1 API Secret",
                    },
                    "placeholders": {
                        "host": "https://api.us.example-venue-platform.com (leave empty when using only v2)",
                        "port": "443 (optional)",
                        "login": "v1 API key (leave empty when using only v2)",
                        "password": "v1 API secret",
                        "v2_base_url": "https://nexus.example.com",
                        "v2_token": "pre-issued bearer token (or use client credentials below)",
                        "v2_client_id": "OAuth2 client id",
                        "v2_client_secret": "OAuth2 client secret",
                        "v2_oauth_url": "https://nexus.example.com/oauth/token",
                        "v2_scope": "optional scope",
                        "timeout": "60",
                        "max_retries": "5",
                    },
                },
                "conn-fields": {
                    "v2_base_url": {
                        "label": "v2 Base URL",
                        "description": "Base URL of the v2 (Nexus) API; leave empty when using only v1.",
                        "schema": _TEXT,
                    },
                    "v2_token": {
                        "label": "v2 Bearer Token",
                        "description": "A pre-issued v2 access token. Leave empty to use client credentials.",
                        "schema": _PASSWORD,
                    },
                    "v2_client_id": {
                        "label": "v2 Client ID",
                        "description": "OAuth2 client-credentials client id for the v2 API.",
                        "schema": _TEXT,
                    },
                    "v2_client_secret": {
                        "label": "v2 Client Secret",
                        "description": "OAuth2 client-credentials secret for the v2 API.",
                        "schema": _PASSWORD,
                    },
                    "v2_oauth_url": {
                        "label": "v2 Token URL",
                        "description": "The OAuth2 token endpoint that issues v2 access tokens.",
                        "schema": _TEXT,
                    },
                    "v2_scope": {
                        "label": "v2 Scope",
                        "description": "Scope to request with client credentials (optional).",
                        "schema": _TEXT,
                    },
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "description": "Seconds to wait for an answer (default 60).",
                        "schema": {"type": ["number", "null"], "minimum": 0},
                    },
                    "verify": {
                        "label": "Verify TLS",
                        "description": "Verify the servers' TLS certificates (default on).",
                        "schema": {"type": ["boolean", "null"], "default": True},
                    },
                    "max_retries": {
                        "label": "Max Retries",
                        "description": "Retries after the first attempt of a call that is safe to repeat.",
                        "schema": {"type": ["integer", "null"], "minimum": 0},
                    },
                },
            }
        ],
    }

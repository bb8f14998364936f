"""Bulk loads from a SQL table into the CRM: ``SqlToOpportunityOperator`` and what only it needs
(the sync state, the source reader, the asyncio engine, the shared rate limiter)."""

from __future__ import annotations

from airflow_opportunity_provider.transfers.sql_to_opportunity import SqlToOpportunityOperator

__all__ = ["SqlToOpportunityOperator"]

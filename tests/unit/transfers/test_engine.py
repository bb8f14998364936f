"""The engine's garbage-collector freeze around a load."""

from __future__ import annotations

import gc

import pytest

from airflow_opportunity_provider.transfers.engine import _older_objects_frozen


def test_objects_from_before_a_load_are_frozen_during_it_only() -> None:
    if gc.get_freeze_count():
        pytest.skip("objects were frozen before this test")
    with _older_objects_frozen():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_a_freeze_made_by_someone_else_is_left_alone() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with _older_objects_frozen():
            assert gc.get_freeze_count() >= frozen
        assert gc.get_freeze_count() >= frozen  # not unfrozen by the load
    finally:
        gc.unfreeze()

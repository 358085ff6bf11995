"""Pytest plugin: the `drive_emulator` fixture (a started DriveEmulator, stopped afterwards)."""

from __future__ import annotations

import pytest

from tests.drive_emulator import DriveEmulator


@pytest.fixture
def drive_emulator():
    """A started Drive v3 emulator with no accounts; fails the test if the emulator itself broke."""
    emulator = DriveEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()
    assert not emulator.internal_errors, "the Drive emulator failed internally:\n" + "\n".join(
        emulator.internal_errors)

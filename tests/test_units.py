"""One spelling for bytes, durations and times (shardrun/units.py), edges included."""

from __future__ import annotations

import pytest

from shardrun.units import compact, human_bytes, human_duration, iso_time


@pytest.mark.parametrize("n, text", [
    (None, "unknown"), (0, "0 B"), (999, "999 B"), (1000, "1.00 kB"), (1234, "1.23 kB"),
    (999_994, "999.99 kB"), (999_999, "1.00 MB"), (50_000_000, "50.00 MB"), (15 * 10**9, "15.00 GB"),
    (2.5 * 10**12, "2.50 TB"), (3 * 10**15, "3,000.00 TB"),
])
def test_bytes_are_decimal_with_two_decimals_above_a_kilobyte(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize("seconds, text", [
    (None, "unknown"), (0, "0 s"), (2, "2 s"), (59.4, "59 s"), (59.6, "1 min"), (60, "1 min"),
    (660, "11 min"), (3569, "59 min"), (3570, "1.0 h"), (3600, "1.0 h"), (5472, "1.5 h"), (31_860, "8.8 h"),
    (47.9 * 3600, "47.9 h"), (47.96 * 3600, "2.0 days"), (48 * 3600, "2.0 days"), (10 * 86400, "10.0 days"),
    (1500 * 86400, "1,500.0 days"),
])
def test_durations_take_the_largest_unit_that_reads_naturally(seconds, text):
    assert human_duration(seconds) == text


def test_times_are_iso_in_utc_to_the_second():
    assert iso_time(None) is None
    assert iso_time(0) == "1970-01-01T00:00:00+00:00"
    assert iso_time(1_800_000_000.9) == "2027-01-15T08:00:00+00:00"


@pytest.mark.parametrize("n, text", [(12_345, "12,345"), (1.5, "1.50"), (370_800_000, "370.8M"), (2e9, "2G")])
def test_counts_are_compact_for_a_table_cell(n, text):
    assert compact(n) == text

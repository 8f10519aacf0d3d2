"""How durations are written (analysis.durations): progress exact to the second, estimates rounded."""

import math

from analysis.durations import duration, duration_range, rough_duration


def test_exact_durations_carry_their_unit_and_zero_padding():
    assert duration(12.4) == "12 s"
    assert duration(185) == "3 min 05 s"
    assert duration(3720) == "1 h 02 min"
    assert duration(None) == duration(math.nan) == duration(math.inf) == "n/a"
    assert duration(-3) == "0 s"


def test_rough_durations_round_to_what_a_person_plans_by():
    assert rough_duration(0.2) == "1 s"
    assert rough_duration(12.6) == "13 s"
    assert rough_duration(42) == "40 s"
    assert rough_duration(100) == "2 min"
    assert rough_duration(9000) == "2.5 h"


def test_a_range_shares_its_unit_or_says_about():
    assert duration_range(70, 130) == "1-2 min"
    assert duration_range(40, 80) == "40 s - 1 min"
    assert duration_range(290, 310) == "about 5 min"
    assert duration_range(7200, 14400) == "2.0-4.0 h"

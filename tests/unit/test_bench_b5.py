"""B5's arithmetic: the objectives set from the arms' unloaded figures and the goodput read off
a sweep's attainments. The benchmark itself (two clusters, minutes of load) runs with
`python -m bench --only B5`."""

from __future__ import annotations

import pytest

from bench import b5_goodput as b5
from bench import goodput_figure

RATES = (0.25, 0.5, 1.0, 2.0)


@pytest.mark.parametrize(
    ("attainments", "expected"),
    [
        ([1.0, 0.95, 0.5, 0.0], 0.5 + (0.95 - 0.9) / (0.95 - 0.5) * 0.5),  # crossing
        ([1.0, 1.0, 0.9, 0.85], 1.0),  # exactly 90 % counts as met
        ([1.0, 1.0, 1.0, 0.95], 2.0),  # every rate met: the top one
        ([0.8, 0.5, 0.0, 0.0], 0.0),  # not even the lowest
    ],
)
def test_goodput_is_the_interpolated_90_percent_crossing(attainments, expected):
    assert b5.goodput(RATES, attainments) == pytest.approx(expected)


def test_goodput_takes_the_highest_rate_that_met_the_objective():
    # A noisy dip below 90 % at 0.5 does not hide that 1.0 met it.
    assert b5.goodput(RATES, [1.0, 0.85, 0.92, 0.0]) == pytest.approx(1.0 + 0.02 / 0.92)


def test_objectives_come_from_the_slower_arm_so_both_meet_them_when_idle():
    unloaded = {
        "disaggregated": {"ttft_s": 1.7, "tpot_s": 0.040},
        "colocated": {"ttft_s": 1.1, "tpot_s": 0.025},
    }
    regimes = b5.objectives(unloaded)
    assert (regimes.tight_tpot.ttft_s, regimes.tight_tpot.tpot_s) == pytest.approx((3.0, 0.060))
    assert (regimes.tight_ttft.ttft_s, regimes.tight_ttft.tpot_s) == pytest.approx((2.55, 0.200))


def test_the_ratio_is_of_median_goodputs_and_survives_a_zero_repeat():
    ratio = b5._ratio({"disaggregated": [1.0, 1.2, 0.9], "colocated": [0.5, 0.6, 0.0]}, RATES)
    assert ratio["ratio_of_medians"] == pytest.approx(1.0 / 0.5)
    assert ratio["per_repeat"] == [2.0, 2.0, None]
    assert (ratio["bound"], ratio["censored_at_top"]) == ("", [])


def test_a_baseline_that_met_no_rate_makes_the_ratio_a_lower_bound():
    ratio = b5._ratio({"disaggregated": [2.0, 2.0, 1.0], "colocated": [0.0, 0.0, 0.3]}, RATES)
    assert ratio["ratio_of_medians"] == pytest.approx(2.0 / 0.25)  # colocated < lowest rate
    assert ratio["bound"] == "at least"
    assert ratio["censored_at_top"] == ["disaggregated"]  # met even the top rate


def test_a_saved_result_is_summarized_again_from_its_attainments(tmp_path, monkeypatch):
    monkeypatch.setattr(b5, "RESULTS_DIR", tmp_path)
    attainment = {"disaggregated": [[1.0, 1.0, 0.95, 0.5]], "colocated": [[0.6, 0.3, 0.1, 0.0]]}
    measured = {
        "rates": list(RATES),
        "objectives": {
            name: {"ttft_s": 3.0, "tpot_s": 0.06} for name in ("tight_tpot", "tight_ttft")
        },
        "attainment": {"tight_tpot": attainment, "tight_ttft": attainment},
    }
    result = b5.result(measured, machine={})
    assert result.details["goodput_req_per_s"]["tight_tpot"]["colocated"] == [0.0]
    assert result.value == pytest.approx(b5.goodput(RATES, [1.0, 1.0, 0.95, 0.5]) / 0.25)
    assert (tmp_path / "B5.png").exists()


def test_the_figure_is_drawn_from_a_results_details(tmp_path):
    attainment = {"disaggregated": [[1.0, 0.9, 0.4, 0.0]], "colocated": [[1.0, 0.6, 0.1, 0.0]]}
    details = {
        "rates": list(RATES),
        "objectives": {
            name: {"ttft_s": 3.0, "tpot_s": 0.06} for name in ("tight_tpot", "tight_ttft")
        },
        "attainment": {"tight_tpot": attainment, "tight_ttft": attainment},
        "goodput_req_per_s": {
            regime: {arm: [b5.goodput(RATES, runs[0])] for arm, runs in attainment.items()}
            for regime in ("tight_tpot", "tight_ttft")
        },
    }
    path = tmp_path / "b5.png"
    goodput_figure.write(path, details)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

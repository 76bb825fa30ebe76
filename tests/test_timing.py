import pytest

from scalenet.timing import interleaved, summarize


def test_interleaved_calls_each_runner_in_turn_after_warmup():
    calls = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = interleaved(runners, 3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        interleaved(runners, 0)


def test_summarize_reports_milliseconds_and_ratios_of_medians():
    s = summarize({"ref": [0.010, 0.030, 0.020], "x": [0.010, 0.005, 0.040]}, "ref")
    assert s["ref"] == {"median_ms": pytest.approx(20.0), "min_ms": pytest.approx(10.0), "ratio_to_ref": pytest.approx(1.0)}
    assert s["x"]["median_ms"] == pytest.approx(10.0) and s["x"]["ratio_to_ref"] == pytest.approx(0.5)
    assert "ratio_to_ref" not in summarize({"x": [1.0]})["x"]

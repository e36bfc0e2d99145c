"""Sweep grids, ranges, the speed/score Pareto front and the machine calibration cache."""

from __future__ import annotations

import json

import pytest

from dlm_cli.errors import UsageError
from dlm_cli.bench.sweep import best_above, expand_range, grid, pareto, split_values


def test_split_values_keeps_commas_inside_brackets_and_quotes():
    assert split_values("0.5,0.7, 0.9") == ["0.5", "0.7", "0.9"]
    assert split_values('[1,2],"a,b",x') == ["[1,2]", '"a,b"', "x"]


def test_grid_is_the_cartesian_product_in_order():
    pts = grid(["threshold=0.5,0.9", "cache=dual", "block_length=8,16,32"])
    assert len(pts) == 6
    assert pts[0].sets == ("threshold=0.5", "cache=dual", "block_length=8")
    assert pts[1].label == "threshold=0.5 block_length=16"  # only the swept keys name the row
    assert pts[-1].swept == (("threshold", "0.9"), ("block_length", "32"))
    assert grid([])[0].sets == () and grid([])[0].label == ""


def test_grid_refuses_bad_items():
    for items, words in ((["threshold"], "KEY=VALUE"), (["threshold=0.5,"], "empty value"),
                         (["threshold=0.5", "threshold=0.7"], "given twice"),
                         (["threshold=" + ",".join(["0.5"] * 300)], "at most")):
        with pytest.raises(UsageError, match=words):
            grid(items)


def test_ranges_for_tune():
    assert expand_range("t", "0.5:0.9:0.1") == ["0.5", "0.6", "0.7", "0.8", "0.9"]
    assert expand_range("b", "4:16:4") == ["4", "8", "12", "16"]
    assert [p.label for p in grid(["block_length=4:8:4"], ranges=True)] == ["block_length=4", "block_length=8"]
    for raw in ("0.9:0.5:0.1", "0:1:0", "a:b:c", "1:2"):
        with pytest.raises(UsageError):
            expand_range("t", raw)


def test_pareto_front_on_fixed_numbers():
    pts = [(1.0, 0.90), (2.0, 0.90), (3.0, 0.80), (2.5, 0.95), (0.5, 0.99), (3.0, 0.70)]
    # (1.0, .90) and (2.0, .90) lose to (2.5, .95); (3.0, .70) loses to (3.0, .80)
    assert pareto(pts) == [4, 3, 2]
    assert best_above(pts, 0.9) == 3 and best_above(pts, 0.8) == 2 and best_above(pts, 0.999) is None
    assert pareto([(1.0, None), (2.0, None)]) == [1]


def test_copy_bandwidth_is_cached_and_survives_a_corrupt_cache(tmp_path, monkeypatch):
    from dlm_cli.bench import machine

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(machine, "CALIBRATION_BYTES", 4 * 1024 * 1024)
    gbps, fresh = machine.copy_bandwidth("cpu")
    assert fresh and gbps > 0
    again, fresh2 = machine.copy_bandwidth("cpu")
    assert not fresh2 and again == pytest.approx(gbps, rel=0.01)
    (tmp_path / "dlm" / "machine.json").write_text("{not json")
    third, fresh3 = machine.copy_bandwidth("cpu")
    assert fresh3 and third > 0
    assert isinstance(json.loads((tmp_path / "dlm" / "machine.json").read_text()), dict)
    assert not list((tmp_path / "dlm").glob("*.tmp*"))  # written whole, then renamed

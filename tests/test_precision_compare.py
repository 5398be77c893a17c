"""studies.precision: two runs of a study compared cell by cell on the same seeds."""

import pandas as pd
import pytest

from studies import precision


def table(accuracy, train_s, prec):
    return pd.DataFrame({"cell": ["a", "b", "c", "d"], "seed": [0, 0, 1, 1],
                         "test_accuracy": accuracy, "train_s": train_s, "precision": prec,
                         "git_commit": "abc"})


def test_differences_are_paired_by_cell_and_seed_and_times_compared():
    fp32 = table([0.50, 0.60, 0.70, 0.80], [10.0, 10.0, 10.0, 10.0], "fp32")
    bf16 = table([0.51, 0.60, 0.69, 0.82], [5.0, 5.0, 4.0, 6.0], "bf16").iloc[::-1]  # any order
    out = precision.compare(fp32, bf16).set_index("metric").loc["test_accuracy"]
    assert out["rows"] == 4 and out["rows changed"] == 3
    assert out["mean b - a"] == pytest.approx((0.01 + 0 - 0.01 + 0.02) / 4)
    assert out["largest |b - a|"] == pytest.approx(0.02)
    assert precision.time_ratio(fp32, bf16) == (40.0, 20.0, 4)
    # a cell only one table has is left out
    assert precision.compare(fp32, bf16.iloc[:3]).set_index("metric").loc[
        "test_accuracy", "rows"] == 3


def test_command_prints_the_table_and_bad_files_are_one_line(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    table([0.5, 0.6, 0.7, 0.8], [2.0] * 4, "fp32").to_csv(a, index=False)
    table([0.5, 0.6, 0.7, 0.9], [1.0] * 4, "bf16").to_csv(b, index=False)
    assert precision.run_main(precision.main, [str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "precision bf16" in out and "| test_accuracy | 4 |" in out and "a / b = 2.00x" in out
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    assert precision.run_main(precision.main, [str(a), str(tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv has no cell and seed columns" in err and len(err.strip().splitlines()) == 1

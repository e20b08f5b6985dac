"""Identical networks are not shown as differently fast: the summary table and the trade-off plot
give every network of one architecture the same pooled batch-1 latency."""

from joryu.report.figures import pooled_latency
from joryu.report.tables import comparison_rows


def _row(params, macs, median, acc):
    return {"params": params, "latency_ms": median, "test_acc": acc,
            "deploy": {"params": params, "macs": macs, "file_bytes": params * 4,
                       "cpu_batch1": {"median_ms": median, "p10_ms": median * 0.9, "p90_ms": median * 1.2}}}


def test_same_architecture_shares_one_latency_and_others_keep_their_own():
    rows = {"teacher": _row(10400, 129920, 0.152, 97.2),
            "student alone": _row(7400, 7300, 0.041, 54.7),
            "student + kd": _row(7400, 7300, 0.067, 58.1),
            "student + fitnets": _row(7400, 7300, 0.050, 57.0)}
    pooled = pooled_latency(rows)
    assert pooled["teacher"] == 0.152
    assert pooled["student alone"] == pooled["student + kd"] == pooled["student + fitnets"] == 0.050
    table = comparison_rows(rows)
    lat = {r[0]: r[2] for r in table[1:]}
    assert lat["student alone"] == lat["student + kd"] == "0.050" and lat["teacher"] == "0.152"


def test_a_row_without_deployment_numbers_keeps_its_own_latency():
    rows = {"a": {"params": 10, "latency_ms": 0.5, "test_acc": 1.0}, "b": _row(10, 10, 0.3, 2.0)}
    assert {r[0]: r[2] for r in comparison_rows(rows)[1:]} == {"a": "0.500", "b": "0.300"}

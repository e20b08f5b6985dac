"""Re-judge committed result files by the current rule, from the per-seed values they store.

    python -m joryu.reproduce.rejudge [NAME ...] [--results results]

Trains nothing. For each ``results/NAME.json`` judged by the older rule (paired mean - 2 SE > 0),
every claim is judged again by ``joryu.stats`` (the t rule) from the per-seed values in the file's
arms table, and ``results/NAME.md`` and ``.json`` are written again by the registry's one writer.
Each file then says which verdicts changed and from what to what (``meta["rejudged"]`` and a
section of the Markdown; each claim keeps its old verdict as ``verdict_under_2se``). A claim whose
per-seed values the file does not hold is left as it was, and the file says so.

Which arms and metric a claim compares, its direction and its margin come from the reproduction's
declaration (its ``Study``, built without training), matched by the claim's text; a reproduction
that returns a finished report instead provides ``judge_tables(tables) -> claims``.
Running it again changes nothing but the date.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from joryu.reproduce import registry
from joryu.reproduce.claims import Claim, Report, Table
from joryu.reproduce.protocol import PROTOCOL, Study, judge_compare

COMMAND = "python -m joryu.reproduce.rejudge"
OLD_PROTOCOL_START = "**Protocol** (docs/reproduction-protocol.md)"


def _judged(name: str, tables: list[Table], seed_list: list[int],
            test_se: dict[str, float | None] | None = None) -> tuple[dict[str, Claim], str, str]:
    """Claims judged now from ``tables``, by text; the study's ``tried``; why none, if none.
    ``test_se``: per claim, the test-set sampling error the file stores (None: not measured)."""
    info = (registry.REPRODUCTIONS.get(name) if name in registry.REPRODUCTIONS else None)
    if info is None:
        return {}, "", f"no reproduction named {name!r} is registered"
    module = sys.modules.get(info.fn.__module__)
    if hasattr(module, "judge_tables"):
        return {c.claim: c for c in module.judge_tables(tables)}, "", ""
    with tempfile.TemporaryDirectory() as tmp:  # a declaration trains nothing; out_dir is for figures
        kw = {"out_dir": Path(tmp)} if "out_dir" in inspect.signature(info.fn).parameters else {}
        study = info.fn(seed_list, False, False, **kw)
    if not isinstance(study, Study):
        return {}, "", "the reproduction returns a finished report and declares no judge_tables"
    arms = next((t for t in tables if t.title == study.table_title), None)
    if arms is None:
        return {}, study.tried, f"the file has no table {study.table_title!r} of per-seed values"
    judged = {}
    for c in study.claims:
        try:
            judged[c.claim] = judge_compare(study, c, arms.rows, (test_se or {}).get(c.claim))
        except ValueError:
            pass  # reported below as a claim without per-seed values
    return judged, study.tried, ""


def rejudge_file(path: str | Path, date: str | None = None) -> dict | None:
    """Re-judge one result file in place; return its ``meta["rejudged"]`` (None: already t-judged)."""
    path = Path(path)
    data = json.loads(path.read_text())
    meta = dict(data["meta"])
    stored = data["claims"]
    legacy = meta.get("rule") != registry.RULE_NAME
    if not legacy and "rejudged" not in meta:
        return None  # judged by the t rule when it ran: nothing to redo
    tables = [Table(**t) for t in data["tables"]]
    judged, tried, why_none = _judged(data["name"], tables, meta["seed_list"],
                                      {c["claim"]: (c.get("effect") or {}).get("test_se") for c in stored})

    claims, extra, changes, missing = [], [], [], []
    for c in stored:
        before = c.get("verdict_under_2se") or (c["verdict"] if legacy else None)
        new = judged.get(c["claim"])
        if new is None:
            new = Claim(c["claim"], c["criterion"], c["reproduced"], c["evidence"], c.get("effect", {}))
            missing.append({"claim": c["claim"], "why": why_none or "the file holds no per-seed values for "
                            "this claim's arms (or the claim is no longer declared): verdict kept as judged "
                            "by the older rule"})
        elif before is not None and before != new.verdict:
            e = new.effect
            changes.append({"claim": c["claim"], "before": before, "after": new.verdict, "mean": e["mean"],
                            "interval": e["interval"], "n": e["n"], "detail": new.evidence})
        claims.append(new)
        extra.append({"verdict_under_2se": before} if before is not None else {})

    setup = data["setup"]
    if OLD_PROTOCOL_START in setup:
        head, rest = setup.split(OLD_PROTOCOL_START, 1)
        tail = rest.split("\n\n", 1)[1] if "\n\n" in rest else ""
        setup = head + PROTOCOL + ("\n\n" + tail if tail else "")
    notes = list(data["notes"])
    if tried and not all(c.reproduced for c in claims) and not any(n.startswith("What was tried") for n in notes):
        notes.insert(0, f"What was tried for the claims that did not reproduce: {tried.strip()}")

    meta["rule"] = registry.RULE_NAME
    meta["rejudged"] = {"date": date or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                        "command": COMMAND, "changes": changes, "not_rejudged": missing}
    report = Report(title=data["title"], paper=data["paper"], setup=setup, tables=tables, claims=claims,
                    notes=notes)
    registry.write_result(path.parent, data["name"], report, meta, extra)
    return meta["rejudged"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="reproductions to re-judge (default: every results/*.json)")
    ap.add_argument("--results", default="results", help="folder of the result files (default: results)")
    args = ap.parse_args(argv)
    registry._discover()
    folder = Path(args.results)
    paths = [folder / f"{n}.json" for n in args.names] or sorted(folder.glob("*.json"))
    for p in paths:
        if not p.is_file():
            print(f"{p}: no such result file", file=sys.stderr)
            return 2
    for p in paths:
        rj = rejudge_file(p)
        if rj is None:
            print(f"{p.stem}: judged by the t rule already")
            continue
        print(f"{p.stem}: {len(rj['changes'])} verdict(s) changed"
              + (f", {len(rj['not_rejudged'])} not re-judged" if rj["not_rejudged"] else ""))
        for c in rj["changes"]:
            print(f"  {c['before']} -> {c['after']}: {c['claim'][:90]}\n    {c['detail']}")
        for c in rj["not_rejudged"]:
            print(f"  not re-judged: {c['claim'][:90]} ({c['why']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

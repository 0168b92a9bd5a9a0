"""Runs the Autobahn TestSuite cases (kosoku) against CaptureLink's test-only echo route and
judges them: every case must pass (OK, NON-STRICT or INFORMATIONAL), except the cases whose message
is larger than the server's 64 KiB limit, where closing with 1009 (message too big) is the correct
answer and the case is counted as "documented". Anything else fails the run.

Usage: python scripts/autobahn.py ws://127.0.0.1:PORT/__echo OUTDIR [CASE-GLOB ...]
Compression (12.*, 13.*: permessage-deflate, which the server does not offer) is excluded.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path

from kosoku import FailureError, run_fuzzingclient

MAX_MESSAGE = 64 * 1024
EXCLUDE = ["12.*", "13.*"]
SIZE = re.compile(r"length (\d+) \* 2\*\*(\d+)")


def payload_size(description: str) -> int | None:
    m = SIZE.search(description)
    return int(m.group(1)) * 2 ** int(m.group(2)) if m else None


def verdict(r) -> tuple[str, str]:
    if r.passed:
        return "ok", f"{r.behavior.value}/{r.behavior_close.value}"
    size = payload_size(r.description)
    if size is not None and size > MAX_MESSAGE and r.remote_close_code == 1009:
        return "documented", f"{size} B message > 64 KiB limit: closed with 1009"
    return "failed", (
        f"{r.behavior.value}/{r.behavior_close.value}, close {r.remote_close_code}: "
        f"{r.result} {r.result_close}"
    )


async def main() -> int:
    url, outdir = sys.argv[1], Path(sys.argv[2])
    include = sys.argv[3:] or None
    started = time.monotonic()
    try:
        results = await run_fuzzingclient(url, include, EXCLUDE, concurrency=4)
    except FailureError as failure:
        results = failure.results
    took = time.monotonic() - started
    if not results:
        print("autobahn: no case ran", file=sys.stderr)
        return 1
    counts = {"ok": 0, "documented": 0, "failed": 0}
    rows = []
    for r in results:
        kind, why = verdict(r)
        counts[kind] += 1
        rows.append({"case": r.case_id, "verdict": kind, "why": why, "ms": r.duration})
        if kind == "failed":
            print(f"FAILED {r.case_id}: {why}\n       {r.description}", file=sys.stderr)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "summary.json").write_text(json.dumps({"url": url, "counts": counts, "cases": rows}, indent=1))
    try:
        from kosoku._report import write_reports

        write_reports(results, str(outdir / "report"))
    except Exception as e:  # the HTML report is a convenience only
        print(f"(no HTML report: {e})", file=sys.stderr)
    documented = sorted({row["case"].rsplit(".", 1)[0] for row in rows if row["verdict"] == "documented"})
    print(
        f"autobahn: {len(results)} cases in {took:.1f} s: {counts['ok']} passed, "
        f"{counts['documented']} documented (1009 over 64 KiB; groups {', '.join(documented) or '-'}), "
        f"{counts['failed']} failed; report in {outdir}/"
    )
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

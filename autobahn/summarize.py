# -*- coding: utf-8 -*-
"""Summarize an Autobahn|Testsuite fuzzingclient report and decide pass/fail.

Usage: python summarize.py REPORT_DIR [--agent NAME] [--strict-close] [--summary-file FILE]

Reads REPORT_DIR/index.json (written by wstest 0.8.2, or by kosoku in the same format), prints
counts per behavior and per closing behavior, and details every failing case from its per-case
JSON report. Exit status: 0 if every case passed, 1 if any failed, 2 if the report is missing,
empty or unreadable.

A case passes when its "behavior" is OK, NON-STRICT or INFORMATIONAL. Anything else (FAILED,
UNIMPLEMENTED, NO_CLOSE, ...) fails. The closing behavior ("behaviorClose") is reported; with
--strict-close a closing behavior of FAILED or UNCLEAN fails the case too (WRONG CODE and
FAILED BY CLIENT stay warnings: the report itself shows them as non-strict/almost).

Runs on Python 2.7 and 3.x.
"""
from __future__ import print_function

import io
import json
import os
import sys

try:
    STRING_TYPES = (str, unicode)  # noqa: F821 - Python 2
except NameError:
    STRING_TYPES = (str,)

PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")
CLOSE_OK = ("OK", "INFORMATIONAL")
CLOSE_FATAL = ("FAILED", "UNCLEAN")


def case_key(case_id):
    """Sort "9.1.10" after "9.1.2"."""
    out = []
    for part in case_id.split("."):
        try:
            out.append((0, int(part), ""))
        except ValueError:
            out.append((1, 0, part))
    return out


def shorten(value, limit=400):
    text = value if isinstance(value, STRING_TYPES) else json.dumps(value, sort_keys=True)
    text = text.replace("\n", " ")
    if len(text) > limit:
        text = text[:limit] + "... (%d chars)" % len(text)
    return text


def load_json(path):
    with io.open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def main(argv):
    args = list(argv)
    agent = None
    strict_close = False
    summary_file = None
    positional = []
    while args:
        a = args.pop(0)
        if a == "--agent":
            agent = args.pop(0)
        elif a == "--strict-close":
            strict_close = True
        elif a == "--summary-file":
            summary_file = args.pop(0)
        else:
            positional.append(a)
    if len(positional) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    report_dir = positional[0]
    index_path = os.path.join(report_dir, "index.json")
    if not os.path.isfile(index_path):
        print("autobahn: no report at %s (did the runner crash or time out?)" % index_path)
        return 2
    try:
        index = load_json(index_path)
    except Exception as e:  # noqa: BLE001 - any unreadable report is a hard error
        print("autobahn: cannot read %s: %s" % (index_path, e))
        return 2

    agents = [agent] if agent else sorted(index)
    lines = []

    def out(s=""):
        lines.append(s)
        print(s)

    status = 0
    for name in agents:
        cases = index.get(name)
        if not cases:
            print("autobahn: agent %r has no cases in %s (agents: %s)"
                  % (name, index_path, ", ".join(sorted(index)) or "none"))
            return 2
        ids = sorted(cases, key=case_key)
        by_behavior = {}
        by_close = {}
        by_section = {}
        failing = []
        close_warn = []
        total_ms = 0
        for cid in ids:
            c = cases[cid]
            b = c.get("behavior", "MISSING")
            bc = c.get("behaviorClose", "MISSING")
            by_behavior[b] = by_behavior.get(b, 0) + 1
            by_close[bc] = by_close.get(bc, 0) + 1
            section = cid.split(".")[0]
            sec = by_section.setdefault(section, {})
            sec[b] = sec.get(b, 0) + 1
            total_ms += c.get("duration", 0) or 0
            bad = b not in PASSING or (strict_close and bc in CLOSE_FATAL)
            if bad:
                failing.append(cid)
            elif bc not in CLOSE_OK:
                close_warn.append(cid)

        out("Autobahn|Testsuite fuzzingclient report for agent %r: %d cases (%s)"
            % (name, len(ids), index_path))
        out("")
        out("%-16s %6s" % ("behavior", "cases"))
        out("%-16s %6s" % ("-" * 16, "-" * 6))
        for b in sorted(by_behavior):
            out("%-16s %6d" % (b, by_behavior[b]))
        out("%-16s %6d" % ("total", len(ids)))
        out("")
        out("%-16s %6s" % ("close behavior", "cases"))
        out("%-16s %6s" % ("-" * 16, "-" * 6))
        for b in sorted(by_close):
            out("%-16s %6d" % (b, by_close[b]))
        out("")
        behaviors = sorted(by_behavior)
        out("per section: " + "  ".join(
            "%s: %s" % (s, ", ".join("%s %d" % (b, by_section[s][b])
                                     for b in behaviors if b in by_section[s]))
            for s in sorted(by_section, key=lambda x: case_key(x))))
        out("sum of case durations: %.1f s" % (total_ms / 1000.0))
        out("")

        for cid in close_warn:
            c = cases[cid]
            out("note: case %s passed (%s) with closing behavior %s (remote close code %s)"
                % (cid, c.get("behavior"), c.get("behaviorClose"), c.get("remoteCloseCode")))
        if close_warn:
            out("")

        if failing:
            status = 1
            out("FAILING CASES (%d): %s" % (len(failing), " ".join(failing)))
            out("")
            for cid in failing:
                c = cases[cid]
                detail = {}
                rf = c.get("reportfile")
                if rf and os.path.isfile(os.path.join(report_dir, rf)):
                    try:
                        detail = load_json(os.path.join(report_dir, rf))
                    except Exception:  # noqa: BLE001
                        detail = {}
                out("=== case %s: behavior %s, close %s, remote close code %s"
                    % (cid, c.get("behavior"), c.get("behaviorClose"), c.get("remoteCloseCode")))
                for key in ("description", "expectation", "result", "resultClose"):
                    if detail.get(key):
                        out("  %-12s %s" % (key + ":", shorten(detail[key], 600)))
                if "expected" in detail:
                    out("  %-12s %s" % ("expected:", shorten(detail["expected"])))
                if "received" in detail:
                    out("  %-12s %s" % ("observed:", shorten(detail["received"])))
                if "expectedClose" in detail:
                    out("  %-12s %s" % ("expectClose:", shorten(detail["expectedClose"])))
                if rf:
                    out("  %-12s %s" % ("report:", os.path.join(report_dir, rf)))
                out("")
        else:
            out("PASS: all %d cases are OK, NON-STRICT or INFORMATIONAL" % len(ids))
        out("")

    if summary_file:
        with io.open(summary_file, "w", encoding="utf-8") as f:
            f.write(u"\n".join(lines) + u"\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""bench/report_markdown.py — the Markdown of bench/report, from the benches' JSON.

Pure functions of the data: `Results` wraps the two JSON documents `bench/passthrough --json`
and `bench/writes --json` wrote, `targets()` checks the targets the issues set, and `render()`
returns report.md. Nothing here runs a benchmark or draws a plot (bench/report_plots.py).
"""

PASS_TARGETS = ["direct", "pgbouncer", "proxy"]
PASS_LABELS = {"direct": "direct", "pgbouncer": "PgBouncer", "proxy": "proxy"}


class Results:
    """The cells of one report run, indexed by (workload, mode, clients, target)."""

    def __init__(self, passthrough, writes):
        self.passthrough = passthrough
        self.writes = writes
        self._pass = {(c["workload"], c["mode"], c["clients"], c["target"]): c
                      for c in (passthrough or {}).get("cells", [])}
        self._writes = {(c["workload"], c["mode"], c["clients"], c["target"]): c
                        for c in (writes or {}).get("cells", [])}

    # passthrough
    def pass_workloads(self):
        seen = []
        for c in (self.passthrough or {}).get("cells", []):
            if c["workload"] not in seen:
                seen.append(c["workload"])
        return seen

    def pass_tps(self, workload, mode, clients, target):
        c = self._pass.get((workload, mode, clients, target))
        return c["tps"] if c else None

    # writes
    @property
    def proxy(self):
        return f"proxy {(self.writes or {}).get('durability', 'wal')}"

    def write_targets(self):
        return ["direct sc=on", "direct sc=off", self.proxy, "ack-everything"]

    def write_workloads(self):
        return list((self.writes or {}).get("workloads", {}).items())

    def write_cell(self, workload, mode, clients, target):
        c = self._writes.get((workload, mode, clients, target))
        return c if c and not c.get("failed") else None

    def write_value(self, workload, mode, clients, target, key):
        c = self.write_cell(workload, mode, clients, target)
        return c.get(key) if c else None

    def write_rows(self):
        """(workload key, title, mode, clients) for every combination the writes run covered."""
        w = self.writes or {}
        return [(k, t, m, c) for k, t in self.write_workloads() for m in w.get("modes", [])
                for c in w.get("clients", [])]

    def pass_cpu(self, workload, mode, clients, target):
        c = self._pass.get((workload, mode, clients, target))
        return (c or {}).get("cpu_us_per_txn")

    def pass_rows(self):
        p = self.passthrough or {}
        return [(wl, m, c) for wl in self.pass_workloads() for m in p.get("modes", [])
                for c in p.get("clients", [])]


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(v, spec=".0f", none="—"):
    return none if v is None else format(v, spec)


def table(header, rows, align):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _range(values):
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if values else (None, None)


def targets(r):
    """The issues' targets: a list of dicts (name, issue, goal, measured, met, cells)."""
    out = []

    def add(name, issue, goal, values, good, worst, shown=".2f"):
        values = [v for v in values if v is not None]
        if not values:
            out.append(dict(name=name, issue=issue, goal=goal, measured="not measured", met=None))
            return
        w = worst(values)
        n_met = sum(1 for v in values if good(v))
        lo, hi = min(values), max(values)
        measured = f"{format(lo, shown)}–{format(hi, shown)} (worst {format(w, shown)})" if lo != hi \
            else format(lo, shown)
        out.append(dict(name=name, issue=issue, goal=goal, measured=measured, met=n_met == len(values),
                        cells=f"{n_met}/{len(values)}"))

    if r.passthrough:
        pgb = [ratio(r.pass_tps(w, m, c, "proxy"), r.pass_tps(w, m, c, "pgbouncer")) for w, m, c in r.pass_rows()]
        dr = [ratio(r.pass_tps(w, m, c, "proxy"), r.pass_tps(w, m, c, "direct")) for w, m, c in r.pass_rows()]
        add("pass-through tps proxy ÷ PgBouncer (session mode)", 3, "≥ 1.5", pgb, lambda v: v >= 1.5, min)
        add("pass-through tps proxy ÷ direct", 3, "≥ 0.6", dr, lambda v: v >= 0.6, min)
    if r.writes:
        px = r.proxy
        rows8 = [(k, m, c) for k, _, m, c in r.write_rows() if c == 8]
        t = lambda k, m, c, tg: r.write_value(k, m, c, tg, "tps")  # noqa: E731
        add("acked tps proxy ÷ ack-everything, 8 clients", 4, "≥ 0.8",
            [ratio(t(k, m, c, px), t(k, m, c, "ack-everything")) for k, m, c in rows8], lambda v: v >= 0.8, min)
        add("acked tps proxy ÷ direct synchronous_commit=off, 8 clients", 4, "≥ 2",
            [ratio(t(k, m, c, px), t(k, m, c, "direct sc=off")) for k, m, c in rows8], lambda v: v >= 2, min)
        e = lambda k, m, c, tg: r.write_value(k, m, c, tg, "e2e_rows_per_s")  # noqa: E731
        add("(a) end-to-end rows/s proxy ÷ direct off", 4, "≥ 1.5",
            [ratio(e(k, m, c, px), e(k, m, c, "direct sc=off")) for k, _, m, c in r.write_rows() if k == "a"],
            lambda v: v >= 1.5, min)
        wb = lambda k, m, c, tg: r.write_value(k, m, c, tg, "wal_bytes_per_write")  # noqa: E731
        add("(b) WAL bytes per client write, proxy ÷ direct off", 4, "≤ 0.05 (1/20)",
            [ratio(wb(k, m, c, px), wb(k, m, c, "direct sc=off")) for k, _, m, c in r.write_rows() if k == "b"],
            lambda v: v <= 0.05, max, shown=".3f")
        sums = [r.write_value(k, m, c, tg, "sum_check") for k, _, m, c in r.write_rows() if k == "b"
                for tg in r.write_targets() if tg != "ack-everything"]
        sums = [s for s in sums if s]
        if sums:
            exact = sum(1 for s in sums if s["exact"])
            out.append(dict(name="(b) final sums exact (every target but ack-everything)", issue=4, goal="all",
                            measured=f"{exact}/{len(sums)} exact", met=exact == len(sums),
                            cells=f"{exact}/{len(sums)}"))
    return out


def key_ratios(r):
    """One line per headline ratio (min–max over the cells), for the console and the report."""
    lines = []

    def span(name, values, spec=".2f"):
        lo, hi = _range(values)
        if lo is not None:
            lines.append(f"{name}: {format(lo, spec)}–{format(hi, spec)}" if lo != hi else f"{name}: {format(lo, spec)}")

    if r.passthrough:
        span("passthrough proxy/PgBouncer",
             [ratio(r.pass_tps(w, m, c, "proxy"), r.pass_tps(w, m, c, "pgbouncer")) for w, m, c in r.pass_rows()])
        span("passthrough proxy/direct",
             [ratio(r.pass_tps(w, m, c, "proxy"), r.pass_tps(w, m, c, "direct")) for w, m, c in r.pass_rows()])
    if r.writes:
        px = r.proxy
        t = lambda k, m, c, tg: r.write_value(k, m, c, tg, "tps")  # noqa: E731
        for base, name in (("ack-everything", "ack-everything"), ("direct sc=off", "direct off"),
                           ("direct sc=on", "direct on")):
            span(f"writes proxy/{name}", [ratio(t(k, m, c, px), t(k, m, c, base)) for k, _, m, c in r.write_rows()])
        wb = lambda k, m, c, tg: r.write_value(k, m, c, tg, "wal_bytes_per_write")  # noqa: E731
        for k, title in r.write_workloads():
            span(f"writes WAL bytes/write proxy/direct off, ({k}) {title}",
                 [ratio(wb(k, m, c, px), wb(k, m, c, "direct sc=off")) for kk, _, m, c in r.write_rows() if kk == k])
    return lines


def _pass_section(r):
    p = r.passthrough
    rows = []
    for w, m, c in r.pass_rows():
        tps = [r.pass_tps(w, m, c, t) for t in PASS_TARGETS]
        rows.append([w, m, str(c)] + [fmt(v) for v in tps]
                    + [fmt(ratio(tps[2], tps[1]), ".2f"), fmt(ratio(tps[2], tps[0]), ".2f")])
    body = [f"## Pass-through (`bench/passthrough`, {p['duration_s']} s per cell)", "",
            "pgbench select-only (`-S`, scale 10) and a `SELECT 1` script against direct PostgreSQL, "
            "PgBouncer (session mode) and the proxy, measured one after the other per row. tps:", "",
            table(["workload", "mode", "clients", "direct", "PgBouncer", "proxy", "proxy/PgBouncer",
                   "proxy/direct"], rows, ["---", "---", "---:", "---:", "---:", "---:", "---:", "---:"]),
            "", "![pass-through tps against clients](tps_passthrough.png)", ""]
    cpu_rows = []
    for w, m, c in r.pass_rows():
        for t, between in (("direct", None), ("pgbouncer", "pgbouncer"), ("proxy", "proxy")):
            us = r.pass_cpu(w, m, c, t)
            if us:
                parts = [us.get("pgbench"), us.get("postgres"), us.get(between) if between else None]
                cpu_rows.append([w, m, str(c), PASS_LABELS[t]] + [fmt(v, ".1f") for v in parts]
                                + [fmt(sum(v or 0 for v in parts), ".1f")])
    if cpu_rows:
        body += ["### CPU per transaction (µs, user + system, middle half of each run)", "",
                 "On two shared cores, tps is about 2 s of CPU divided by the total: whatever sits between "
                 "pgbench and PostgreSQL also makes PostgreSQL's side dearer (more wake-ups).", "",
                 table(["workload", "mode", "clients", "target", "pgbench", "PostgreSQL", "in between", "total"],
                       cpu_rows, ["---", "---", "---:", "---", "---:", "---:", "---:", "---:"]), ""]
    if not p.get("complete"):
        body.insert(2, "**This run did not complete; the cells below are those measured before it stopped.**\n")
    return body


def _writes_section(r):
    w = r.writes
    px = r.proxy
    tg = r.write_targets()
    tps_rows, lat_rows, e2e_rows, wal_rows = [], [], [], []
    for k, title, m, c in r.write_rows():
        label = [f"({k}) {title}", m, str(c)]
        tps = [r.write_value(k, m, c, t, "tps") for t in tg]
        sums = [r.write_value(k, m, c, t, "sum_check") for t in tg[:3]]
        sums = [s for s in sums if s]
        sum_cell = "—" if not sums else ("exact" if all(s["exact"] for s in sums) else
                                         "**MISMATCH** " + ", ".join(f"{s['sum']}≠{s['transactions']}"
                                                                     for s in sums if not s["exact"]))
        tps_rows.append(label + [fmt(v) for v in tps]
                        + [fmt(ratio(tps[2], tps[0]), ".2f"), fmt(ratio(tps[2], tps[1]), ".2f"),
                           fmt(ratio(tps[2], tps[3]), ".2f"), sum_cell])
        lat_rows.append(label + [f"{fmt(r.write_value(k, m, c, t, 'p50_ms'), '.2f')} / "
                                 f"{fmt(r.write_value(k, m, c, t, 'p99_ms'), '.2f')}" for t in tg])
        e2e = [(r.write_value(k, m, c, t, "e2e_s"), r.write_value(k, m, c, t, "e2e_rows_per_s")) for t in tg[:3]]
        e2e_rows.append(label + [f"{fmt(s, '.1f')} s / {fmt(v)}" for s, v in e2e]
                        + [fmt(ratio(e2e[2][1], e2e[1][1]), ".2f")])
        wal = [r.write_value(k, m, c, t, "wal_bytes_per_write") for t in tg[:3]]
        wal_rows.append(label + [fmt(v) for v in wal]
                        + [fmt(ratio(wal[2], wal[0]), ".3f"), fmt(ratio(wal[2], wal[1]), ".3f")])
    head = ["workload", "mode", "clients"]
    al3 = ["---", "---", "---:"]
    body = [f"## Writes (`bench/writes`, {w['duration_s']} s per cell, proxy durability `{w['durability']}`)", "",
            "pgbench through each target, one after the other per row: direct PostgreSQL with "
            "`synchronous_commit` on and off, the proxy in front of write-behind tables, and `ack-everything` "
            "(answers every message without doing anything: the wire's physical limit).", "",
            "### Acknowledged tps", "",
            table(head + ["direct on", "direct off", px, "ack-everything", "proxy/on", "proxy/off", "proxy/ack",
                          "(b) sums"], tps_rows, al3 + ["---:"] * 7 + ["---"]),
            "", "![writes tps against clients](tps_writes.png)", "",
            "### Latency (p50 / p99 ms, from pgbench's per-transaction log, 5 % sample)", "",
            table(head + tg, lat_rows, al3 + ["---:"] * 4),
            "", "![latency percentiles](latency.png)", "",
            "### End to end (until `writebehind.flush()` returns after the run)", "",
            "Seconds from the start of the pgbench run until the flush returned / client writes per second over "
            "that time.", "",
            table(head + tg[:3] + ["proxy/off rows/s"], e2e_rows, al3 + ["---:"] * 4),
            "", "### PostgreSQL WAL bytes per client write", "",
            "`pg_current_wal_lsn()` before the run and after the flush, divided by the client writes.", "",
            table(head + tg[:3] + ["proxy/on", "proxy/off"], wal_rows, al3 + ["---:"] * 5),
            "", "![WAL bytes per client write](wal_bytes.png)", ""]
    groups = ["pgbench", "postgres", "apply worker", "proxy", "ack-everything"]
    cpu_rows = []
    for k, title, m, c in r.write_rows():
        for t in tg:
            us = r.write_value(k, m, c, t, "cpu_us_per_txn")
            if us:
                cpu_rows.append([f"({k}) {title}", m, str(c), t] + [fmt(us.get(g), ".1f") for g in groups]
                                + [fmt(sum(us.get(g) or 0 for g in groups), ".1f")])
    if cpu_rows:
        body += ["### CPU per write (µs, user + system, middle half of each run)", "",
                 "PostgreSQL = its backends (for the proxy: the COPY into the inbox and barriers); the apply "
                 "worker is counted apart.", "",
                 table(head + ["target", "pgbench", "PostgreSQL", "apply worker", "proxy", "ack-everything",
                               "total"], cpu_rows, al3 + ["---"] + ["---:"] * 6), ""]
    errors = [c for c in w.get("cells", []) if c.get("error") or c.get("failed")]
    if errors:
        body += ["### Failed cells", ""]
        body += [f"- ({c['workload']}) {c['mode']}, {c['clients']} clients, {c['target']}: "
                 f"{' '.join((c.get('error') or 'pgbench failed').splitlines()[0].split())}" for c in errors]
        body.append("")
    if not w.get("complete"):
        body.insert(2, "**This run did not complete; the cells below are those measured before it stopped.**\n")
    return body


def render(r, meta):
    """report.md as a string. meta: machine and run facts gathered by bench/report."""
    lines = ["# Benchmark report", "",
             f"Generated by `bench/report {meta['argv']}` on {meta['started']} (UTC), "
             f"{meta['elapsed']} in all. Every number below was measured in this run; the raw cells are in "
             "`passthrough.json` and `writes.json` next to this file. Timings on a shared 2-core machine are "
             "noisy: compare the ratios, measured side by side, not absolute numbers.", "",
             "## Machine and run", "",
             table(["", ""], [[k, v] for k, v in meta["machine"]], ["---", "---"]), ""]
    t = targets(r)
    if t:
        rows = [[x["name"], f"#{x['issue']}", x["goal"], x["measured"],
                 "—" if x["met"] is None else ("**met**" if x["met"] else f"not met ({x.get('cells')} cells)")]
                for x in t]
        lines += ["## Targets", "",
                  "From the issues (3: pass-through; 4: write-behind). Measured: min–max over the cells "
                  "(and the worst one).", "",
                  table(["target", "issue", "goal", "measured", "met"], rows, ["---", "---", "---", "---", "---"]),
                  ""]
    k = key_ratios(r)
    if k:
        lines += ["## Key ratios (min–max over the cells)", ""] + [f"- {x}" for x in k] + [""]
    if r.passthrough:
        lines += _pass_section(r)
    if r.writes:
        lines += _writes_section(r)
    return "\n".join(lines).rstrip() + "\n"

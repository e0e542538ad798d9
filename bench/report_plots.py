"""bench/report_plots.py — the PNG plots of bench/report (matplotlib, Agg backend).

Each function takes a report_markdown.Results and a path, and writes one PNG: tps against clients
for the pass-through and the write benchmarks, latency percentiles, and WAL bytes per write.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from report_markdown import PASS_LABELS, PASS_TARGETS  # noqa: E402

COLORS = {"direct": "#4c72b0", "pgbouncer": "#dd8452", "proxy": "#55a868",
          "direct sc=on": "#4c72b0", "direct sc=off": "#8172b3", "ack-everything": "#c44e52"}
STYLES = {"ack-everything": "--"}


def _color(target):
    return COLORS.get(target, COLORS["proxy"] if target.startswith("proxy") else "#333333")


def _grid(n, ncols=2, width=5.2, height=3.4):
    nrows = max(1, (n + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.set_visible(False)
    return fig, flat[:n]


def _tps_panel(ax, title, clients, series):
    """series: [(label, target, [tps per client count])]"""
    for label, target, values in series:
        xs = [c for c, v in zip(clients, values) if v is not None]
        ys = [v for v in values if v is not None]
        if ys:
            ax.plot(xs, ys, marker="o", label=label, color=_color(target), linestyle=STYLES.get(target, "-"))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("clients")
    ax.set_ylabel("tps")
    ax.set_xticks(clients)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)


def _finish(fig, axes, path, title):
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle(title, y=1.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def tps_passthrough(r, path):
    p = r.passthrough
    panels = [(w, m) for w in r.pass_workloads() for m in p["modes"]]
    fig, axes = _grid(len(panels))
    for ax, (w, m) in zip(axes, panels):
        _tps_panel(ax, f"{w}, -M {m}", p["clients"],
                   [(PASS_LABELS[t], t, [r.pass_tps(w, m, c, t) for c in p["clients"]]) for t in PASS_TARGETS])
    _finish(fig, axes, path, f"Pass-through tps against clients ({p['duration_s']} s per cell)")


def tps_writes(r, path):
    w = r.writes
    panels = [(k, t, m) for k, t in r.write_workloads() for m in w["modes"]]
    fig, axes = _grid(len(panels))
    for ax, (k, t, m) in zip(axes, panels):
        _tps_panel(ax, f"({k}) {t}, -M {m}", w["clients"],
                   [(tg, tg, [r.write_value(k, m, c, tg, "tps") for c in w["clients"]]) for tg in r.write_targets()])
    _finish(fig, axes, path, f"Write tps against clients ({w['duration_s']} s per cell)")


def latency(r, path):
    """p99 as a light bar with p50 as a dark bar inside it, per target, grouped by client count."""
    w = r.writes
    targets = r.write_targets()
    panels = [(k, t, m) for k, t in r.write_workloads() for m in w["modes"]]
    fig, axes = _grid(len(panels))
    width = 0.8 / len(targets)
    for ax, (k, t, m) in zip(axes, panels):
        for i, tg in enumerate(targets):
            xs = [j + (i - (len(targets) - 1) / 2) * width for j in range(len(w["clients"]))]
            p99 = [r.write_value(k, m, c, tg, "p99_ms") for c in w["clients"]]
            p50 = [r.write_value(k, m, c, tg, "p50_ms") for c in w["clients"]]
            ax.bar(xs, [v or 0 for v in p99], width, color=_color(tg), alpha=0.35, label=f"{tg} p99")
            ax.bar(xs, [v or 0 for v in p50], width * 0.6, color=_color(tg), label=f"{tg} p50")
        ax.set_xticks(range(len(w["clients"])))
        ax.set_xticklabels([f"{c} clients" for c in w["clients"]])
        if any(b.get_height() > 0 for b in ax.patches):
            ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.set_title(f"({k}) {t}, -M {m}", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, bbox_to_anchor=(0.5, 1.0), frameon=False,
               fontsize=8)
    fig.suptitle("Write latency: p50 (dark) inside p99 (light), per target", y=1.07)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def wal_bytes(r, path):
    """WAL bytes per client write: direct on, direct off and the proxy, one panel per workload."""
    w = r.writes
    targets = r.write_targets()[:3]
    workloads = r.write_workloads()
    groups = [(m, c) for m in w["modes"] for c in w["clients"]]
    fig, axes = _grid(len(workloads), ncols=len(workloads), width=4.4, height=3.6)
    width = 0.8 / len(targets)
    for ax, (k, t) in zip(axes, workloads):
        for i, tg in enumerate(targets):
            xs = [j + (i - (len(targets) - 1) / 2) * width for j in range(len(groups))]
            vals = [r.write_value(k, m, c, tg, "wal_bytes_per_write") for m, c in groups]
            bars = ax.bar(xs, [v or 0 for v in vals], width, color=_color(tg), label=tg)
            for b, v in zip(bars, vals):
                if v is not None:
                    ax.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                                va="bottom", fontsize=7)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{m}\n{c} cl" for m, c in groups], fontsize=8)
        ax.set_ylabel("WAL bytes per client write")
        ax.set_title(f"({k}) {t}", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    _finish(fig, axes, path, "PostgreSQL WAL bytes per client write (until the flush returns)")


def write_all(r, out_dir):
    """Writes every plot the data allows; returns the file names written."""
    import os
    written = []
    if r.passthrough and r.passthrough.get("cells"):
        tps_passthrough(r, os.path.join(out_dir, "tps_passthrough.png"))
        written.append("tps_passthrough.png")
    if r.writes and r.writes.get("cells"):
        for name, fn in (("tps_writes.png", tps_writes), ("latency.png", latency), ("wal_bytes.png", wal_bytes)):
            fn(r, os.path.join(out_dir, name))
            written.append(name)
    return written

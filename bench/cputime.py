"""CPU time per transaction of each process taking part in a pgbench run, from /proc.

The benchmarks share two cores between pgbench, PostgreSQL and whatever sits in between, so
throughput ratios alone do not say which process is expensive. `during(cmd, groups)` runs a
command (pgbench) and samples the CPU time (user + system) of the processes `groups` selects,
over the middle half of the run (connection set-up and the ramp at both ends left out).
"""
import os
import subprocess
import threading
import time

HZ = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    """(parent pid, CPU ticks) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return None
    fields = st[st.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cluster_pid(data_dir):
    """The postmaster's pid of the cluster in `data_dir` (first line of postmaster.pid)."""
    with open(os.path.join(data_dir, "postmaster.pid")) as f:
        return int(f.readline())


def postgres_groups(postmaster):
    """A classifier: the postmaster and its children are `postgres`, except the write-behind
    apply worker (its process title names it), which is `apply worker`."""
    def classify(pid, ppid):
        if pid == postmaster:
            return "postgres"
        if ppid == postmaster:
            return "apply worker" if "writebehind" in _cmdline(pid) else "postgres"
        return None
    return classify


def _snapshot(classify, fixed):
    """Ticks per group: `fixed` maps pids (and their threads) to a group; `classify(pid, ppid)`
    names the group of any other process, or None."""
    ticks = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        s = _stat(pid)
        if s is None:
            continue
        ppid, t = s
        group = fixed.get(pid) or fixed.get(ppid) or classify(pid, ppid)
        if group:
            ticks[group] = ticks.get(group, 0) + t
    return ticks


def during(cmd, duration, classify, fixed, **run_args):
    """Runs `cmd` (expected to take `duration` seconds) and returns (its CompletedProcess,
    {group: cores used}) sampled over the middle half of the run. `fixed` maps pids to groups;
    the command's own process is the group `pgbench`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **run_args)
    groups = dict(fixed)
    groups[proc.pid] = "pgbench"
    sample = {}

    def watch():
        time.sleep(duration / 4)
        a, t0 = _snapshot(classify, groups), time.monotonic()
        time.sleep(duration / 2)
        b, t1 = _snapshot(classify, groups), time.monotonic()
        sample.update({g: (b.get(g, 0) - a.get(g, 0)) / HZ / (t1 - t0) for g in b})

    watcher = threading.Thread(target=watch)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    return done, {g: c for g, c in sample.items() if c > 0}


def micros_per_txn(cores, tps):
    """{group: CPU microseconds per transaction} from cores used and transactions per second."""
    return {g: c * 1e6 / tps for g, c in cores.items()} if tps else {}

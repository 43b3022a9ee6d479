#!/usr/bin/env python3
"""Where a proxied connection's CPU goes, for `scripts/bench cost` and `scripts/bench instructions`.

cost: for the CONNECT cycle (conn-rate) and plain HTTP (keep-alive and new connection), the
warden's user and kernel CPU per unit from /proc/PID/stat, next to what the same workload costs
the load generator and the upstream together with no proxy (the "direct pair"). A proxy
terminates one connection from the client and opens one to the upstream, so its kernel work per
connection is about the direct pair's, whatever it does in user space.

instructions: user-space instructions per unit, counted by callgrind (valgrind) while the
workload runs against the warden at 8 concurrent loops. Counts, unlike times, hardly move
between runs on a noisy machine, so they compare two builds of the warden.

syscalls: system calls per unit, counted by `strace -c` attached to the warden while the
workload runs (slowed, but the counts per unit do not depend on speed). The audit thread's
sleeps and writes, futex wake-ups and timer reads are left out of the total: they follow
time, not units of work.

Usage: bench_cost.py cost WARDEN BENCH
       bench_cost.py instructions BENCH WARDEN [WARDEN...]
       bench_cost.py syscalls BENCH WARDEN [WARDEN...]
"""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")
WORKLOADS = {
    "conn": ("conn-rate", "raw", [], "conns"),
    "http keep-alive": ("http-rate", "http", ["--keepalive"], "requests"),
    "http new conn": ("http-rate", "http", [], "requests"),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu(pid):
    """(user, system) seconds of a process, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def wait_port(port, proc, what):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


class Rig:
    """Two upstreams (raw echo and HTTP) and, optionally, a warden in front of them."""

    def __init__(self, bench, warden=None, prefix=()):
        self.bench = bench
        self.dir = tempfile.TemporaryDirectory()
        self.procs = []
        self.raw = self.start_upstream([])
        self.http = self.start_upstream(["--http"])
        self.warden = None
        self.proxy = "none"
        if warden:
            d = self.dir.name
            with open(f"{d}/allow.txt", "w") as f:
                f.write("127.0.0.0/8:*\n[::1]:*\n")
            port = free_port()
            self.warden = subprocess.Popen(
                [*prefix, warden, "serve", "--allowlist", f"{d}/allow.txt",
                 "--http-listen", f"127.0.0.1:{port}", "--socks-listen", "off",
                 "--admin-listen", f"127.0.0.1:{free_port()}", "--audit-log", f"{d}/audit.jsonl",
                 "--run-id", "bench", "--max-connections", "20000"],
                stderr=open(f"{d}/warden.log", "w"))
            self.procs.append(self.warden)
            wait_port(port, self.warden, "warden")
            self.proxy = f"127.0.0.1:{port}"

    def start_upstream(self, extra):
        port = free_port()
        p = subprocess.Popen([self.bench, "upstream", "--listen", f"127.0.0.1:{port}", *extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_port(port, p, "upstream")
        return p, f"127.0.0.1:{port}"

    def units(self, name):
        """Runs workload `name` (3 s measured after 0.5 s of warm-up, 32 loops) and returns the
        units of work over the whole run: egress-bench counts only the measured 3 s, so the
        count is scaled to the wall time, warm-up and start included, that CPU is read over."""
        t0 = time.monotonic()
        n = self.run(name, 3, 0.5, 32)
        return n * (time.monotonic() - t0) / 3

    def run(self, name, seconds, warmup, concurrency):
        cmd, kind, extra, unit = WORKLOADS[name]
        target = self.raw[1] if kind == "raw" else self.http[1]
        args = [self.bench, cmd, "--proxy", self.proxy, "--target", target,
                "--seconds", str(seconds), "--warmup", str(warmup),
                "--concurrency", str(concurrency), *extra]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        line = out.strip().splitlines()[-1]
        return int(re.search(rf"\b{unit}=(\d+)", line).group(1))

    def close(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.wait()
        self.dir.cleanup()


def cost(warden, bench):
    print("| workload | warden user µs | warden kernel µs | warden total µs "
          "| direct pair µs (client + upstream) |")
    print("|---|---|---|---|---|")
    for name in WORKLOADS:
        # The direct pair: the load generator's CPU (its own rusage, through wait) and the
        # upstream's, over the whole run, warm-up included, so the count includes it too.
        rig = Rig(bench)
        up = rig.raw[0] if WORKLOADS[name][1] == "raw" else rig.http[0]
        before = sum(cpu(up.pid))
        r0 = os.times()
        units = rig.units(name)
        r1 = os.times()
        pair = (r1.children_user - r0.children_user + r1.children_system
                - r0.children_system + sum(cpu(up.pid)) - before)
        direct_us = pair / units * 1e6
        rig.close()

        rig = Rig(bench, warden)
        u0, s0 = cpu(rig.warden.pid)
        units = rig.units(name)
        u1, s1 = cpu(rig.warden.pid)
        rig.close()
        user, kernel = (u1 - u0) / units * 1e6, (s1 - s0) / units * 1e6
        print(f"| {name} | {user:.0f} | {kernel:.0f} | {user + kernel:.0f} | {direct_us:.0f} |")


def instructions(bench, wardens):
    print("| build | " + " | ".join(f"{n} instructions / unit" for n in WORKLOADS) + " |")
    print("|---|" + "---|" * len(WORKLOADS))
    for warden in wardens:
        cells = []
        for name in WORKLOADS:
            out = tempfile.mkdtemp()
            rig = Rig(bench, warden, ["valgrind", "--tool=callgrind", "--dump-instr=no",
                                      f"--callgrind-out-file={out}/cg.%p"])
            pid = rig.warden.pid
            # Count only the measured window: zero after the warm-up, dump at its end.
            runner = subprocess.Popen(
                ["sh", "-c", f"sleep 2; callgrind_control -z {pid}; sleep 6; "
                             f"callgrind_control -d {pid}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            n = rig.run(name, 6, 2, 8)
            runner.wait()
            dumps = [f for f in os.listdir(out) if re.fullmatch(r"cg\.\d+\.\d+", f)]
            total = 0
            for f in dumps:
                with open(os.path.join(out, f)) as fh:
                    total += sum(int(l.split()[1]) for l in fh if l.startswith("totals:"))
            rig.close()
            cells.append(f"{total // n}" if dumps and n else "ERR")
        print(f"| {warden} | " + " | ".join(cells) + " |")


# Calls that follow time rather than work: the audit thread's group-commit sleep and write,
# and futex wake-ups between threads.
TIMED = {"clock_nanosleep", "futex", "write", "madvise"}


def syscalls(bench, wardens):
    print("| build | workload | syscalls / unit | most frequent (per unit) |")
    print("|---|---|---|---|")
    for warden in wardens:
        for name in WORKLOADS:
            rig = Rig(bench, warden)
            out = os.path.join(rig.dir.name, "strace.txt")
            st = subprocess.Popen(["strace", "-c", "-f", "-p", str(rig.warden.pid), "-o", out],
                                  stderr=subprocess.PIPE, text=True)
            # strace says so on stderr once it is attached to the process.
            for line in st.stderr:
                if "attached" in line:
                    break
            n = rig.run(name, 3, 0, 32)
            st.send_signal(signal.SIGINT)
            st.communicate()
            counts = {}
            with open(out) as fh:
                for line in fh:
                    f = line.split()
                    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                        counts[f[-1]] = int(f[3])
            rig.close()
            work = {k: v / n for k, v in counts.items() if k not in TIMED}
            top = sorted(work.items(), key=lambda kv: -kv[1])[:8]
            listed = ", ".join(f"{k} {v:.2f}" for k, v in top)
            print(f"| {os.path.basename(warden)} | {name} | {sum(work.values()):.1f} | {listed} |")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "cost":
        cost(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "instructions":
        instructions(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) >= 4 and sys.argv[1] == "syscalls":
        syscalls(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)

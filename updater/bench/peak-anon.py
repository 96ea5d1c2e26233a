#!/usr/bin/env python3
"""Runs a command and prints, on standard error after it ends, its peak
anonymous memory (RssAnon, sampled every 2 ms) and its peak RSS (VmHWM,
the kernel's own): the figures the install's memory budget is about
(docs/updater.md, "Memory"). Exits with the command's status."""
import subprocess, sys, time

p = subprocess.Popen(sys.argv[1:])
anon = hwm = 0
while p.poll() is None:
    try:
        with open(f"/proc/{p.pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    anon = max(anon, int(line.split()[1]))
                elif line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
    except OSError:
        pass
    time.sleep(0.002)
print(f"peak-anon-kib {anon} peak-rss-kib {hwm}", file=sys.stderr)
sys.exit(p.returncode)

#!/usr/bin/env python3
"""Runs a command and prints, on standard error after it ends, the peak
anonymous memory (RssAnon, sampled every 2 ms) and the peak RSS (the
larger of VmHWM and sampled VmRSS) of the command, or with --watch PID of
another process while the command runs (RAUC's service while `rauc
install` talks to it): the figures the install's memory budget is about
(docs/updater.md, "Memory"). Exits with the command's status.

    peak-anon.py [--watch PID] COMMAND [ARG ...]
"""
import subprocess, sys, time

args = sys.argv[1:]
watch = None
if args[:1] == ["--watch"]:
    watch, args = int(args[1]), args[2:]


def status(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith(("RssAnon:", "VmRSS:", "VmHWM:"))}
    except (OSError, ValueError, IndexError):
        return {}


p = subprocess.Popen(args)
anon = rss = 0
while p.poll() is None:
    s = status(watch or p.pid)
    anon = max(anon, s.get("RssAnon", 0))
    rss = max(rss, s.get("VmRSS", 0), 0 if watch else s.get("VmHWM", 0))
    time.sleep(0.002)
print(f"peak-anon-kib {anon} peak-rss-kib {rss}", file=sys.stderr)
sys.exit(p.returncode)

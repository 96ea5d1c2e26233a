#!/usr/bin/env python3
"""Stages real files from /usr into DIR until they fill PERCENT of SIZE bytes,
for a benchmark root filesystem image like an appliance's (binaries,
libraries, text). Usage: make-rootfs.py DIR SIZE_BYTES PERCENT"""
import os, shutil, sys

dest, size, percent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
target = size * percent // 100
total = 0
for root, dirs, files in os.walk("/usr"):
    dirs.sort()
    for name in sorted(files):
        src = os.path.join(root, name)
        if os.path.islink(src) or not os.path.isfile(src):
            continue
        n = os.path.getsize(src)
        if total + n > target:
            continue
        out = os.path.join(dest, os.path.relpath(src, "/"))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(src, out)
        total += n
        if total >= target * 0.995:
            print(total)
            sys.exit(0)
print(total)

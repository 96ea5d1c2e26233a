#!/usr/bin/env bash
# The Switchback demo: a factory disk, an update to slot B, a trial boot,
# a commit, and a technician's rollback, narrated step by step.
# Runs on a disk image file; the whole-machine version boots it in QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"

bash .ci/install-deps
cargo build --release --locked -p bootctl -p image-tools
bin=$PWD/target/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "A vendor builds release 1.0 as an ext4 root filesystem image"
mkdir -p "$work/root-v1/etc"
echo "1.0.0" > "$work/root-v1/etc/release"
mkfs.ext4 -q -F -L rootfs -d "$work/root-v1" "$work/rootfs-v1.img" 32M
ls -l "$work/rootfs-v1.img"

say "The factory writes the disk: slot_a = 1.0, slot_b empty, data = ext4"
"$bin/image-tools" mkdisk --out "$work/disk.img" --slot-size 64M --data-size 32M --slot-a "$work/rootfs-v1.img"
"$bin/bootctl" --disk "$work/disk.img" status

say "An update lands in slot_b; the boot flag flips to it, on trial (3 tries)"
"$bin/bootctl" --disk "$work/disk.img" set-active b --tries 3

say "The boot stage selects a slot, spending one try before it boots"
"$bin/bootctl" --disk "$work/disk.img" select
"$bin/bootctl" --disk "$work/disk.img" --booted-slot b status

say "The health check passes: slot_b is committed"
"$bin/bootctl" --disk "$work/disk.img" --booted-slot b mark-good

say "A field technician wants the previous release back"
"$bin/bootctl" --disk "$work/disk.img" --booted-slot b rollback
"$bin/bootctl" --disk "$work/disk.img" status

say "Standard tools agree with what Switchback wrote"
sgdisk -v "$work/disk.img" | grep -m1 .
sfdisk --json "$work/disk.img" | grep -E '"name"|"attrs"'

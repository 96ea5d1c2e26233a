#!/usr/bin/env bash
# The Switchback demo, narrated step by step, in two parts:
# 1. the tools on a disk image file: a vendor builds and signs a release, the
#    appliance installs it into the inactive slot, `bootctl select` plays the
#    boot stage, the health check commits it, a technician rolls back, and
#    tampered bundles are refused;
# 2. the whole machine in QEMU: the factory disk boots by itself through UEFI
#    firmware (OVMF) and the boot stage on its ESP,
#    installs an update from a USB stick, commits it, then rolls a release
#    whose health check fails back by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"

bash .ci/install-deps
cargo build --release --locked -p bootctl -p image-tools -p updater
bin=$PWD/target/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
cd "$work"

say "The vendor creates a signing key; devices trust its public half"
mkdir -p keyring data
run "$bin/image-tools" keygen --private vendor.pem --public keyring/vendor.pem

say "Release 1.0 is an ext4 root filesystem, signed like every release; the factory checks it and writes it to slot_a with its signed record, so the device knows what it runs (part 2 puts the boot stage on the ESP too)"
mkdir -p root/etc && echo "1.0.0" > root/etc/release
mkfs.ext4 -q -F -L rootfs -d root rootfs-1.0.img 48M
run "$bin/image-tools" build --key vendor.pem --image rootfs=rootfs-1.0.img \
  --compatible acme-gateway --version 1.0.0 --security-version 1 --out release-1.0.swb
run "$bin/image-tools" mkdisk --out disk.img --slot-size 64M --data-size 32M \
  --slot-a release-1.0.swb --public keyring/vendor.pem
run "$bin/bootctl" --disk disk.img status

say "Release 2.0: the vendor's pipeline builds a signed, compressed bundle"
echo "2.0.0" > root/etc/release
head -c 8M /dev/urandom > root/etc/new-feature.bin
mkfs.ext4 -q -F -L rootfs -d root rootfs-2.0.img 48M
run "$bin/image-tools" build --key vendor.pem --image rootfs=rootfs-2.0.img \
  --compatible acme-gateway --version 2.0.0 --security-version 1 --out release-2.0.swb
run "$bin/image-tools" inspect release-2.0.swb

say "The appliance installs it into the inactive slot (slot_b), checking every chunk"
cat > config.json <<JSON
{"compatible": "acme-gateway", "keyring": "$work/keyring", "data_dir": "$work/data"}
JSON
run "$bin/updater" --config config.json --disk disk.img --booted-slot a install release-2.0.swb
run "$bin/updater" --config config.json --disk disk.img --booted-slot a status

say "Reboot: the boot stage selects slot_b on trial and spends one try"
run "$bin/bootctl" --disk disk.img select

say "The health check passes: slot_b is committed"
run "$bin/bootctl" --disk disk.img --booted-slot b mark-good
run "$bin/updater" --config config.json --disk disk.img --booted-slot b status

say "A field technician wants release 1.0 back, then 2.0 again"
run "$bin/bootctl" --disk disk.img --booted-slot b rollback
run "$bin/bootctl" --disk disk.img --booted-slot a rollback

say "A bundle whose manifest was altered (version 2.0.0 -> 9.0.0) is refused before anything is written"
sed 's/"version":"2.0.0"/"version":"9.0.0"/' release-2.0.swb > tampered.swb
sha256sum disk.img > before.sum
if "$bin/updater" --config config.json --disk disk.img --booted-slot b install tampered.swb; then
  echo "tampered bundle accepted!" >&2; exit 1
else
  echo "(exit code $?)"
fi
sha256sum -c --quiet before.sum && echo "disk.img unchanged"

say "A corrupted payload is caught at the first bad chunk: running slot and data untouched, the half-written inactive slot left unbootable"
cp release-2.0.swb corrupt.swb
# Inverted, not overwritten: a byte that already held the new value would
# leave the bundle intact.
pos=$(( $(stat -c %s corrupt.swb) - 100000 ))
byte=$(od -An -tu1 -j "$pos" -N1 corrupt.swb)
printf "$(printf '\\%03o' $(( byte ^ 255 )))" | dd of=corrupt.swb bs=1 seek="$pos" conv=notrunc status=none
if "$bin/updater" --config config.json --disk disk.img --booted-slot b install --allow-downgrade corrupt.swb; then
  echo "corrupted bundle accepted!" >&2; exit 1
else
  echo "(exit code $?)"
fi
run "$bin/bootctl" --disk disk.img status

say "Standard tools agree with what Switchback wrote"
sgdisk -v disk.img | grep -m1 .
sfdisk --json disk.img | grep -E '"name"|"attrs"'

cd "$top"
say "Part 2: the whole machine. Building the appliance and booting it in QEMU (TCG, a few minutes)"
cargo run --release --locked -p qemu-tests --bin demo

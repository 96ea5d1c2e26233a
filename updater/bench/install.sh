#!/usr/bin/env bash
# Install benchmark: Switchback vs RAUC 1.8 (plain bundle, squashfs zstd)
# vs SWUpdate (zstd raw image, streamed), all installing the same real
# 512 MiB ext4 root filesystem into a slot file, measured in one run, and
# the machine's limit for such an install, computed from the rates this run
# measures (zstd decompression and SHA-256 per core, write bandwidth).
# Memory (docs/updater.md, "Memory"): peak anonymous memory and peak RSS
# of our install, full and delta, of `swupdate -i` and of RAUC's service,
# at 512 MiB and 2 GiB, on one core and on all; and our install's time
# against the updater before the memory budget (BASELINE, a git revision,
# built here).
#   bash updater/bench/install.sh               (as root: installs the peers)
#   taskset -c 0 bash updater/bench/install.sh  (everything on one core)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"
bash .ci/install-deps
need=()
for p in rauc rauc-service swupdate squashfs-tools cpio dbus openssl; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -p updater -p image-tools >/dev/null
B=$PWD/target/release
top=$PWD
w=$(mktemp -d /var/tmp/swb-install-bench.XXXXXX)
cleanup() {
  [ -n "${rauc_pid:-}" ] && kill "$rauc_pid" 2>/dev/null
  git -C "$top" worktree remove --force "$w/baseline" 2>/dev/null || true
  rm -rf "$w"
}
trap cleanup EXIT
cd "$w"

python3 "$OLDPWD/image-tools/bench/make-rootfs.py" root $((512 << 20)) 70 >/dev/null
mkfs.ext4 -q -F -d root rootfs.img 512M && rm -rf root
size=$(stat -c %s rootfs.img)

# Switchback
mkdir -p keys data
"$B/image-tools" keygen --private k.pem --public keys/k.pem >/dev/null
"$B/image-tools" build --key k.pem --image rootfs=rootfs.img --compatible bench --version 2.0.0 --out bench.swb >/dev/null
"$B/image-tools" mkdisk --out disk.img --slot-size 520M --data-size 8M >/dev/null
echo "{\"compatible\":\"bench\",\"keyring\":\"$w/keys\",\"data_dir\":\"$w/data\"}" > config.json

# Peers share an RSA key and self-signed certificate.
openssl req -x509 -newkey rsa:2048 -nodes -keyout rsa.key -out rsa.crt -subj "/CN=bench" -days 30 2>/dev/null

# SWUpdate: CMS-signed sw-description, zstd raw image streamed to the slot.
mkdir swu && zstd -q -3 -T0 rootfs.img -o swu/rootfs.img.zst
cat > swu/sw-description <<JSON
{"software": {"version": "2.0.0", "hardware-compatibility": ["1.0"], "images": [{
  "filename": "rootfs.img.zst", "device": "$w/swu-slot.img", "type": "raw",
  "compressed": "zstd", "installed-directly": true,
  "sha256": "$(sha256sum swu/rootfs.img.zst | cut -d' ' -f1)"}]}}
JSON
openssl cms -sign -in swu/sw-description -out swu/sw-description.sig -signer rsa.crt -inkey rsa.key -outform DER -nosmimecap -binary
(cd swu && printf '%s\n' sw-description sw-description.sig rootfs.img.zst | cpio -o -H crc --quiet > ../bench.swu)
truncate -s 520M swu-slot.img

# RAUC: plain bundle (squashfs, zstd), raw slots, noop bootloader, its own
# service on a private system bus.
mkdir rauc-in && cp rootfs.img rauc-in/ && cat > rauc-in/manifest.raucm <<INI
[update]
compatible=bench
version=2.0.0
[bundle]
format=plain
[image.rootfs]
filename=rootfs.img
INI
rauc bundle --cert=rsa.crt --key=rsa.key --mksquashfs-args="-comp zstd" rauc-in bench.raucb >/dev/null 2>&1
rm -rf rauc-in
truncate -s 520M rauc-a.img rauc-b.img
mkdir -p rauc-mnt
cat > system.conf <<INI
[system]
compatible=bench
bootloader=noop
mountprefix=$w/rauc-mnt
[keyring]
path=$w/rsa.crt
[slot.rootfs.0]
device=$w/rauc-a.img
type=raw
bootname=A
[slot.rootfs.1]
device=$w/rauc-b.img
type=raw
bootname=B
INI
mkdir -p /run/dbus
# A pid file left by a bus that is gone (a container restarted) stops a new one.
pgrep -x dbus-daemon >/dev/null || { rm -f /run/dbus/pid; dbus-daemon --system --fork; }
rauc service --conf=system.conf --override-boot-slot=A >rauc.log 2>&1 &
rauc_pid=$!
sleep 1

# Until the slot is durable: a tool that leaves dirty page cache pays for it.
secs() { local s e; sync; s=$(date +%s.%N); "$@" >/dev/null 2>&1; sync; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
best() { local b=999999 t; for _ in 1 2 3; do t=$(secs "$@"); b=$(echo "if ($t < $b) $t else $b" | bc -l); done; printf '%.3f' "$b"; }

t_ours=$(best "$B/updater" --config config.json --disk disk.img --booted-slot a install bench.swb)
t_rauc=$(best rauc install bench.raucb)
t_swu=$(best swupdate -H bench:1.0 -k rsa.crt -i bench.swu)
# The machine's rates, one core each (zstd -d and openssl are single-threaded).
t_dec=$(best zstd -d -q -c swu/rootfs.img.zst)
t_sha=$(best openssl dgst -sha256 rootfs.img)
t_wr=$(best dd if=rootfs.img of=write-test.img bs=4M conv=fdatasync status=none)
rm -f write-test.img
read -r compressed zero < <("$B/image-tools" inspect --json bench.swb |
  python3 -c 'import json,sys; i=json.load(sys.stdin)["images"][0]; print(i["compressed"], i["zero"])')
cores=$(nproc)
cmp -n "$size" rauc-b.img rootfs.img && cmp -n "$size" swu-slot.img rootfs.img

# The updater before the memory budget, built as ours is.
BASELINE=${BASELINE:-b9ec514}
git -C "$top" worktree add --detach "$w/baseline" "$BASELINE" >/dev/null 2>&1
# Kept between runs: a build of a fixed revision does not change.
(cd "$w/baseline" && CARGO_TARGET_DIR="/var/tmp/swb-baseline-$BASELINE" cargo build --release --locked -p updater >/dev/null 2>&1)
OLD=/var/tmp/swb-baseline-$BASELINE/release/updater
t_old=$(best "$OLD" --config config.json --disk disk.img --booted-slot a install bench.swb)

# Peak memory: "anon rss" in MiB, sampled every 2 ms (RAUC: its service).
peak() {
  python3 "$top/updater/bench/peak-anon.py" "$@" 2>&1 >/dev/null | tail -1 |
    awk '{ printf "%5.1f %6.1f", $2 / 1024, $4 / 1024 }'
}
# A state directory for each disk: state is tied to its disk (exit 65).
for d in big-disk delta-disk; do
  mkdir -p "$w/data-$d"
  echo "{\"compatible\":\"bench\",\"keyring\":\"$w/keys\",\"data_dir\":\"$w/data-$d\"}" > "config-$d.json"
done
config_of() { [ "$1" = disk.img ] && echo config.json || echo "config-${1%.img}.json"; }
ours() { peak $pin "$B/updater" --config "$(config_of "$1")" --disk "$1" --booted-slot a install "$2"; }
old() { peak $pin "$OLD" --config "$(config_of "$1")" --disk "$1" --booted-slot a install "$2"; }
swu() { peak $pin swupdate -H bench:1.0 -k rsa.crt -i "$1"; }
rauc_peak() {
  taskset -apc "$([ -n "$pin" ] && echo 0 || echo "0-$(($(nproc) - 1))")" "$rauc_pid" >/dev/null
  peak --watch "$rauc_pid" $pin rauc install "$1"
}

# The next release for a delta: 300 random 4 KiB blocks changed.
python3 - <<'PY'
import os, random
random.seed(5)
with open("rootfs.img", "rb") as f:
    data = bytearray(f.read())
for _ in range(300):
    at = random.randrange(len(data) // 4096) * 4096
    data[at:at + 4096] = os.urandom(4096)
open("next.img", "wb").write(data)
PY
"$B/image-tools" delta --base rootfs.img --key k.pem --image rootfs=next.img --compatible bench --version 2.0.2 --out delta.swb >/dev/null
"$B/image-tools" mkdisk --out delta-disk.img --slot-size 520M --data-size 8M --slot-a rootfs.img >/dev/null
rm next.img

# 2 GiB: the image four times over, for each tool.
cat rootfs.img rootfs.img rootfs.img rootfs.img > big.img
"$B/image-tools" build --key k.pem --image rootfs=big.img --compatible bench --version 2.0.1 --out big.swb >/dev/null
"$B/image-tools" mkdisk --out big-disk.img --slot-size 2056M --data-size 8M >/dev/null
mkdir swu-big && zstd -q -3 -T0 big.img -o swu-big/rootfs.img.zst
sed -e "s/$(sha256sum swu/rootfs.img.zst | cut -d' ' -f1)/$(sha256sum swu-big/rootfs.img.zst | cut -d' ' -f1)/" \
  -e "s|swu-slot.img|swu-big-slot.img|" swu/sw-description > swu-big/sw-description
openssl cms -sign -in swu-big/sw-description -out swu-big/sw-description.sig -signer rsa.crt -inkey rsa.key -outform DER -nosmimecap -binary
(cd swu-big && printf '%s\n' sw-description sw-description.sig rootfs.img.zst | cpio -o -H crc --quiet > ../big.swu)
truncate -s 2056M swu-big-slot.img
mkdir rauc-in && mv big.img rauc-in/rootfs.img && printf '[update]\ncompatible=bench\nversion=2.0.1\n[bundle]\nformat=plain\n[image.rootfs]\nfilename=rootfs.img\n' > rauc-in/manifest.raucm
rauc bundle --cert=rsa.crt --key=rsa.key --mksquashfs-args="-comp zstd" rauc-in big.raucb >/dev/null 2>&1
rm -rf rauc-in swu-big
truncate -s 2056M rauc-a.img rauc-b.img

mibs() { printf '%.0f' "$(echo "$size / 1048576 / $1" | bc -l)"; }
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
echo "image: $((size >> 20)) MiB ext4, 70% full of /usr files; $(nproc) cores; best of 3, slot files, page cache warm"
echo "switchback install: ${t_ours}s ($(mibs "$t_ours") MiB/s), including read-back of the slot from the medium"
echo "rauc install:       ${t_rauc}s ($(mibs "$t_rauc") MiB/s)  -> ours is $(ratio "$t_rauc" "$t_ours")x faster"
echo "swupdate -i:        ${t_swu}s ($(mibs "$t_swu") MiB/s)  -> ours is $(ratio "$t_swu" "$t_ours")x faster"
# The least an install that checks signed data must do: decompress the
# image's non-zero bytes and hash its compressed bytes (SHA-256), spread
# over every core, and write the non-zero bytes; whichever takes longer.
mb() { printf '%.0f' "$(echo "$1 / 1000000" | bc -l)"; }
dec=$(echo "$size / $t_dec" | bc -l); sha=$(echo "$size / $t_sha" | bc -l); wr=$(echo "$size / $t_wr" | bc -l)
data=$((size - zero))
cpu=$(echo "($data / $dec + $compressed / $sha) / $cores" | bc -l)
io=$(echo "$data / $wr" | bc -l)
limit=$(echo "if ($cpu > $io) $cpu else $io" | bc -l)
echo "machine: zstd -d $(mb "$dec") MB/s per core, SHA-256 $(mb "$sha") MB/s per core, writes $(mb "$wr") MB/s; $cores core(s)"
echo "bundle: $(mb "$compressed") MB of frames, $(mb "$zero") MB of the image as zero chunks"
echo "machine limit: $(printf '%.3f' "$limit")s (CPU $(printf '%.3f' "$cpu")s on $cores core(s), writes $(printf '%.3f' "$io")s) -> ours reaches $(printf '%.0f' "$(echo "100 * $limit / $t_ours" | bc -l)")% of it"
echo "before the memory budget ($BASELINE): ${t_old}s -> ours takes $(ratio "$t_ours" "$t_old")x its time"
echo
echo "peak memory, MiB: anonymous (what the budget bounds), then RSS (with code pages; a delta's mapped base too)"
printf '%-24s %-13s %-13s %-13s %-13s\n' "" "512M 1 core" "512M all" "2G 1 core" "2G all"
row() {
  local name=$1 small=$2 big=$3 cells=() p
  for img in small big; do
    for p in "taskset -c 0" ""; do
      pin=$p
      if [ "$img" = small ]; then cells+=("$(eval "$small")"); else cells+=("$(eval "$big")"); fi
    done
  done
  printf '%-24s %-13s %-13s %-13s %-13s\n' "$name" "${cells[0]}" "${cells[1]}" "${cells[2]}" "${cells[3]}"
}
row "switchback (full)" "ours disk.img bench.swb" "ours big-disk.img big.swb"
row "switchback (delta)" "ours delta-disk.img delta.swb" "echo '  -'"
row "before the budget (full)" "old disk.img bench.swb" "old big-disk.img big.swb"
row "swupdate -i" "swu bench.swu" "swu big.swu"
row "rauc service" "rauc_peak bench.raucb" "rauc_peak big.raucb"

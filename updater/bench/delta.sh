#!/usr/bin/env bash
# Delta bundle benchmark on a real 512 MiB ext4 root file system and the
# next release of it (a few hundred files changed, some added and removed,
# a few MiB of new binaries): size against `zstd --patch-from` and against
# the full bundle, install time against the full bundle's, and peak RSS of
# a delta install for a 1 GiB image. One run, ratios.
#   bash updater/bench/delta.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"
bash .ci/install-deps
cargo build --release --locked -p updater -p image-tools >/dev/null
B=$PWD/target/release
top=$PWD
w=$(mktemp -d /var/tmp/swb-delta-bench.XXXXXX)
trap 'rm -rf "$w"' EXIT
cd "$w"

python3 "$top/image-tools/bench/make-rootfs.py" root1 $((512 << 20)) 70 >/dev/null
cp -a root1 root2
# The next release: 300 files changed in place, 100 removed, 150 added
# (copies of other files with a new header), 6 MiB of new binaries.
python3 - <<'PY'
import os, random
random.seed(7)
files = sorted(os.path.join(d, f) for d, _, fs in os.walk("root2") for f in fs)
random.shuffle(files)
changed, removed, added_from = files[:300], files[300:400], files[400:550]
for p in changed:
    data = bytearray(open(p, "rb").read())
    for _ in range(1 + len(data) // 50000):
        if data:
            i = random.randrange(len(data)); data[i:i + 16] = os.urandom(16)
    open(p, "wb").write(bytes(data) + b"patched\n")
for p in removed:
    os.remove(p)
os.makedirs("root2/opt/new", exist_ok=True)
for n, p in enumerate(added_from):
    open(f"root2/opt/new/f{n}", "wb").write(b"v2 " + open(p, "rb").read()[::-1])
for n in range(3):
    open(f"root2/opt/new/tool{n}", "wb").write(os.urandom(2 << 20))
PY
mkfs.ext4 -q -F -d root1 v1.img 512M
mkfs.ext4 -q -F -d root2 v2.img 512M
rm -rf root1 root2
mkdir -p keys data
"$B/image-tools" keygen --private k.pem --public keys/k.pem >/dev/null
echo "{\"compatible\":\"bench\",\"keyring\":\"$w/keys\",\"data_dir\":\"$w/data\"}" > config.json

"$B/image-tools" build --key k.pem --image rootfs=v2.img --compatible bench --version 2.0.0 --out full.swb >/dev/null
s=$(date +%s.%N)
"$B/image-tools" delta --base v1.img --key k.pem --image rootfs=v2.img --compatible bench --version 2.0.0 --out delta.swb >/dev/null
e=$(date +%s.%N); t_delta_build=$(echo "$e - $s" | bc -l)
zstd -q -f -3 --patch-from=v1.img v2.img -o patch.zst
full=$(stat -c %s full.swb); delta=$(stat -c %s delta.swb); patch=$(stat -c %s patch.zst)

"$B/image-tools" mkdisk --out disk.img --slot-size 520M --data-size 8M --slot-a v1.img >/dev/null
secs() { local s e; sync; s=$(date +%s.%N); "$@" >/dev/null 2>&1; sync; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
best() { local b=999999 t; for _ in 1 2 3; do t=$(secs "$@"); b=$(echo "if ($t < $b) $t else $b" | bc -l); done; printf '%.3f' "$b"; }
inst() { "$B/updater" --config config.json --disk "$1" --booted-slot a install "$2"; }
t_full=$(best inst disk.img full.swb)
t_delta=$(best inst disk.img delta.swb)
slot_b_mib=$(sfdisk --json disk.img | python3 -c 'import json, sys
t = json.load(sys.stdin)["partitiontable"]
print(next(p["start"] for p in t["partitions"] if p.get("name") == "slot_b") * t.get("sectorsize", 512) >> 20)')
cmp -n "$(stat -c %s v2.img)" <(dd if=disk.img bs=1M skip="$slot_b_mib" count=512 status=none) v2.img

# 1 GiB: each image twice over (raw images; the updater does not care).
cat v1.img v1.img > v1g.img && cat v2.img v2.img > v2g.img && rm v1.img v2.img
"$B/image-tools" delta --base v1g.img --key k.pem --image rootfs=v2g.img --compatible bench --version 2.0.1 --out delta1g.swb >/dev/null
"$B/image-tools" mkdisk --out disk1g.img --slot-size 1040M --data-size 8M --slot-a v1g.img >/dev/null
rss=$(/usr/bin/time -f %M "$B/updater" --config config.json --disk disk1g.img --booted-slot a install delta1g.swb 2>&1 >/dev/null | tail -1)

r() { printf '%.3f' "$(echo "$1 / $2" | bc -l)"; }
echo "images: 512 MiB ext4 v1 -> v2 (300 files changed, 100 removed, 150 added, 6 MiB new binaries); $(nproc) cores"
echo "size: delta bundle $delta bytes, zstd -3 --patch-from $patch bytes (ratio $(r "$delta" "$patch")), full bundle $full bytes (delta is $(r "$delta" "$full") of it)"
echo "delta build: ${t_delta_build}s"
echo "install: full ${t_full}s, delta ${t_delta}s (ratio delta/full $(r "$t_delta" "$t_full"))"
echo "peak RSS of a delta install, 1 GiB image: $((rss / 1024)) MiB (the mapped base is 1024 MiB)"

#!/usr/bin/env bash
# Benchmark of bundle build and verify on a real 512 MiB ext4 root
# filesystem (~70% full of files from /usr), against zstd on the same
# bytes, measured in one run and reported as ratios.
#   bash image-tools/bench/bundle.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"
size_mib=${1:-512}
bash .ci/install-deps
cargo build --release --locked -p image-tools >/dev/null
it=$PWD/target/release/image-tools
work=$(mktemp -d /var/tmp/swb-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

python3 image-tools/bench/make-rootfs.py "$work/root" $((size_mib << 20)) 70 >/dev/null
mkfs.ext4 -q -F -d "$work/root" "$work/rootfs.img" "${size_mib}M"
rm -rf "$work/root"
"$it" keygen --private "$work/k.pem" --public "$work/k.pub" >/dev/null
sync

# Seconds (wall) of a command, stdout discarded.
# Until the output is durable: we fsync the bundle, zstd leaves it to the kernel.
secs() { local s e; sync; s=$(date +%s.%N); "$@" >/dev/null; sync; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
best() { local b=999999 t; for _ in 1 2 3; do t=$(secs "$@"); b=$(echo "if ($t < $b) $t else $b" | bc -l); done; printf '%.3f' "$b"; }

cat "$work/rootfs.img" >/dev/null   # warm the page cache for both sides
t_ours=$(best "$it" build --key "$work/k.pem" --image rootfs="$work/rootfs.img" --compatible bench --version 1.0.0 --out "$work/r.swb")
t_zstd=$(best zstd -q -f -3 -T0 "$work/rootfs.img" -o "$work/rootfs.img.zst")
s_ours=$(stat -c %s "$work/r.swb")
s_zstd=$(stat -c %s "$work/rootfs.img.zst")

v_ours=$(best "$it" verify "$work/r.swb" --public "$work/k.pub")
v_zstd=$(best bash -c "zstd -q -d -c '$work/rootfs.img.zst' | sha256sum")

bytes=$((size_mib << 20))
mibs() { printf '%.0f' "$(echo "$bytes / 1048576 / $1" | bc -l)"; }
echo "image: ${size_mib} MiB ext4, $(du -k --apparent-size "$work/rootfs.img" | cut -f1) KiB, 70% full of /usr files; $(nproc) cores"
printf 'build:  ours %ss (%s MiB/s), zstd -3 -T0 %ss (%s MiB/s): time ratio ours/zstd %.2f\n' \
  "$t_ours" "$(mibs "$t_ours")" "$t_zstd" "$(mibs "$t_zstd")" "$(echo "$t_ours / $t_zstd" | bc -l)"
printf 'size:   ours %s bytes, zstd %s bytes: ratio ours/zstd %.4f\n' "$s_ours" "$s_zstd" "$(echo "$s_ours / $s_zstd" | bc -l)"
printf 'verify: ours %ss (%s MiB/s), zstd -d | sha256sum %ss (%s MiB/s): speed ratio ours/zstd %.2f\n' \
  "$v_ours" "$(mibs "$v_ours")" "$v_zstd" "$(mibs "$v_zstd")" "$(echo "$v_zstd / $v_ours" | bc -l)"

# Build scaling: one thread against every core, and the serial share that
# speed-up means (Amdahl: f = (N/S - 1) / (N - 1)).
n=$(nproc)
t_one=$(best "$it" build --threads 1 --key "$work/k.pem" --image rootfs="$work/rootfs.img" --compatible bench --version 1.0.0 --out "$work/r1.swb")
t_all=$(best "$it" build --threads "$n" --key "$work/k.pem" --image rootfs="$work/rootfs.img" --compatible bench --version 1.0.0 --out "$work/rn.swb")
speedup=$(echo "$t_one / $t_all" | bc -l)
if [ "$n" -gt 1 ]; then serial=$(echo "($n / $speedup - 1) / ($n - 1) * 100" | bc -l); else serial=100; fi
printf 'scaling: build --threads 1 %ss, --threads %s %ss: %.2fx (serial share %.0f %%)\n' \
  "$t_one" "$n" "$t_all" "$speedup" "$serial"

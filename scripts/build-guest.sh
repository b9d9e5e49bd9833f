#!/bin/bash
# Build the small test guest: Debian's cloud kernel plus a busybox initramfs whose
# /init prints a readiness line on the serial console and then runs a shell there.
# Usage: scripts/build-guest.sh OUTDIR   (writes OUTDIR/vmlinuz and OUTDIR/initrd.gz)
set -euo pipefail
out=${1:?usage: build-guest.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [[ -s $out/vmlinuz && -s $out/initrd.gz ]]; then
    echo "guest already built in $out"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $kpkg ]] || { echo "cannot find the versioned cloud kernel package (run apt-get update)" >&2; exit 1; }
apt-get download -q -o APT::Sandbox::User=root "$kpkg" busybox-static >/dev/null
for deb in ./*.deb; do dpkg-deb -x "$deb" root; done
cp root/boot/vmlinuz-* "$out/vmlinuz.tmp"
mkdir -p initramfs/{bin,proc,sys,dev,tmp,mnt}
cp root/bin/busybox initramfs/bin/busybox
for applet in sh mount umount cat echo ls sleep uptime poweroff reboot halt mkdir grep dd sync blkid mdev ip ifconfig udhcpc hostname date; do
    ln -s busybox "initramfs/bin/$applet"
done
cat > initramfs/init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
hostname "$(cat /proc/sys/kernel/hostname)"
echo "CORRAL-GUEST-READY uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
# A shell on the serial console, respawned, so a console session can type commands.
while true; do
    setsid sh -c 'exec sh </dev/ttyS0 >/dev/ttyS0 2>&1'
done
INIT
chmod +x initramfs/init
(cd initramfs && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initrd.gz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
echo "guest built in $out ($kpkg)"

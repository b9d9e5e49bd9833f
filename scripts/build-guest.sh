#!/bin/bash
# Build the small test guest: Debian's cloud kernel plus a busybox initramfs whose
# /init prints a readiness line on the serial console and then runs a shell there.
# It also runs qemu-ga, takes a DHCP lease on each ethN and answers on TCP 8080 (README,
# "Networks and the guest agent").
# Its VGA text console (tty1, the VNC display) shows a banner and a second shell.
# Usage: scripts/build-guest.sh OUTDIR   (writes OUTDIR/vmlinuz and OUTDIR/initrd.gz)
# A guest built by an older version of this script is rebuilt: OUTDIR/VERSION holds a hash of
# the script that built it.
set -euo pipefail
# Kernel modules the guest loads at boot, by name; their dependencies (read from each .ko)
# come along and load first. Modules built into the kernel are skipped. Append, one per need:
# virtio_pci + virtio_blk: disks (vdX, serial = Corral's disk name); isofs: the cidata seed.
# virtio_net + virtio_console: network interfaces (ethN) and the guest agent's virtio-serial port.
# button + evdev: the ACPI power button as an input device, for acpid (graceful stop, soft reboot).
# virtio_scsi + sd_mod: disks on a virtio-scsi bus (a preference's disk bus), as sdX. (The cloud
# kernel has no AHCI driver: a SATA disk is attached but this guest cannot see it.)
# virtio_mem: memory hotplug (a VM with max_memory_mib); loaded unless the kernel command line
# says corral.novirtiomem (a guest that refuses memory, for tests).
MODULES="virtio_pci virtio_blk isofs virtio_net virtio_console button evdev virtio_scsi sd_mod virtio_mem"
out=${1:?usage: build-guest.sh OUTDIR}
stamp=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [[ -s $out/vmlinuz && -s $out/initrd.gz && "$(cat "$out/VERSION" 2>/dev/null)" == "$stamp" ]]; then
    echo "guest already built in $out"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work" "$out/vmlinuz.tmp.$$" "$out/initrd.gz.tmp.$$"' EXIT
cd "$work"
kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $kpkg ]] || { echo "cannot find the versioned cloud kernel package (run apt-get update)" >&2; exit 1; }
apt-get download -q -o APT::Sandbox::User=root "$kpkg" busybox-static >/dev/null
for deb in ./*.deb; do dpkg-deb -x "$deb" root; done
cp root/boot/vmlinuz-* "$out/vmlinuz.tmp.$$"
mkdir -p initramfs/{bin,proc,sys,dev,tmp,mnt}
cp root/bin/busybox initramfs/bin/busybox
# Kernel modules: copied (decompressed: busybox insmod may not read .xz) to /lib/modules, with
# /etc/modules.order listing them dependencies first, for /init to insmod.
moddir=$(echo root/lib/modules/*)
mkdir -p initramfs/lib/modules initramfs/etc
declare -A module_seen=()
module_order=()
add_module() {  # add_module NAME: NAME's dependencies first, then NAME
    local name=${1//-/_} file dep
    [[ -z ${module_seen[$name]:-} ]] || return 0
    module_seen[$name]=1
    if grep -q "/${name//_/[-_]}\.ko" "$moddir/modules.builtin"; then
        return 0
    fi
    file=$(find "$moddir" -name "${name//_/[-_]}.ko*" -print -quit)
    [[ -n $file ]] || { echo "kernel module $name is not in $kpkg" >&2; exit 1; }
    case $file in
        *.ko.xz) xz -dc "$file" ;;
        *.ko.zst) zstd -dqc "$file" ;;
        *.ko.gz) gzip -dc "$file" ;;
        *) cat "$file" ;;
    esac > "initramfs/lib/modules/$name.ko"
    for dep in $(tr '\0' '\n' < "initramfs/lib/modules/$name.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
        add_module "$dep"
    done
    module_order+=("$name")
}
for module in $MODULES; do add_module "$module"; done
printf '%s\n' "${module_order[@]}" > initramfs/etc/modules.order
for applet in sh mount umount cat echo ls sleep uptime poweroff reboot halt mkdir grep dd sync blkid mdev ip ifconfig udhcpc hostname date insmod cut tr rmdir head findfs nc acpid; do
    ln -s busybox "initramfs/bin/$applet"
done
# The guest agent: the host's qemu-ga (Debian's qemu-guest-agent, from the package when the
# host lacks it) with the shared libraries ldd finds for it, at their paths.
qga=/usr/sbin/qemu-ga
if [[ ! -x $qga ]]; then
    apt-get download -q -o APT::Sandbox::User=root qemu-guest-agent >/dev/null
    dpkg-deb -x qemu-guest-agent_*.deb qga-root
    qga=$PWD/qga-root/usr/sbin/qemu-ga
fi
mkdir -p initramfs/usr/sbin initramfs/var/run initramfs/run initramfs/usr/share/udhcpc
cp "$qga" initramfs/usr/sbin/qemu-ga
if ldd "$qga" | grep -q 'not found'; then
    echo "qemu-ga's libraries are missing on this host (apt-get install qemu-guest-agent):" >&2
    ldd "$qga" | grep 'not found' >&2; exit 1
fi
for lib in $(ldd "$qga" | grep -o '/[^ ]*'); do
    mkdir -p "initramfs$(dirname "$lib")"
    cp -L "$lib" "initramfs$lib"
done
printf 'NAME="Corral test guest"\nID=corral-guest\nVERSION_ID=1\nVERSION="1"\n' > initramfs/etc/os-release
# udhcpc's script: configure the lease it got (busybox passes ip, mask as a prefix, router).
cat > initramfs/usr/share/udhcpc/default.script <<'DHCP'
#!/bin/sh
case "$1" in
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/$mask" dev "$interface"
        for gw in $router; do ip route add default via "$gw" dev "$interface"; break; done ;;
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
esac
DHCP
chmod +x initramfs/usr/share/udhcpc/default.script
# What answers on TCP port 8080 (the port-forward tests): one line per connection.
printf '#!/bin/sh\necho "CORRAL-GUEST-HELLO $(hostname)"\n' > initramfs/bin/guest-hello
chmod +x initramfs/bin/guest-hello
cat > initramfs/init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
hostname "$(cat /proc/sys/kernel/hostname)"
for module in $(cat /etc/modules.order); do
    [ "$module" = virtio_mem ] && grep -qw corral.novirtiomem /proc/cmdline && continue
    insmod "/lib/modules/$module.ko"
done
# The ACPI power button powers the guest off, as a real OS does: Corral's graceful stop (and
# libvirt's ACPI reboot, which turns that power-off into a reset) then work.
mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\necho CORRAL-GUEST-POWER-BUTTON > /dev/ttyS0\npoweroff -f\n' > /etc/acpi/PWRF/00000080
chmod +x /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /run/acpid.log 2>/dev/null
# Disks: a virtio disk whose serial is set (Corral sets it to the disk's name) and that holds a
# file system is mounted at /mnt/SERIAL, read-only when the disk is. The NoCloud seed (file
# system label cidata) is mounted at /mnt/cidata; its user-data is printed on ttyS0 between
# CORRAL-USER-DATA-BEGIN and CORRAL-USER-DATA-END, and run (after the readiness line, output on
# ttyS0) when it starts with "#!", as cloud-init runs user scripts.
seed=$(findfs LABEL=cidata 2>/dev/null)
if [ -n "$seed" ]; then
    mkdir -p /mnt/cidata && mount -t iso9660 -o ro "$seed" /mnt/cidata
fi
for dev in /sys/block/vd*; do
    [ -e "$dev" ] || continue
    name=${dev##*/}
    serial=$(cat "$dev/serial" 2>/dev/null)
    mode=rw
    [ "$(cat "$dev/ro")" = 1 ] && mode=ro
    if [ -n "$serial" ] && [ "/dev/$name" != "$seed" ]; then
        mkdir -p "/mnt/$serial"
        mount -o "$mode" "/dev/$name" "/mnt/$serial" 2>/dev/null || rmdir "/mnt/$serial"
    fi
done
if [ -f /mnt/cidata/user-data ]; then
    { echo CORRAL-USER-DATA-BEGIN; cat /mnt/cidata/user-data; echo; echo CORRAL-USER-DATA-END; } > /dev/ttyS0
fi
# Networks: every ethN up, a DHCP lease where a server answers (user networks: 10.0.2.15/24),
# in the background. The guest agent on its virtio-serial port (no udev here: found by the
# port's name in sysfs). A line-per-connection server on TCP 8080.
ip link set lo up
for dev in /sys/class/net/eth*; do
    [ -e "$dev" ] || continue
    ip link set "${dev##*/}" up
    udhcpc -i "${dev##*/}" -q -n -t 10 -T 1 -s /usr/share/udhcpc/default.script >/dev/null 2>&1 &
done
(
    for i in 1 2 3 4 5 6 7 8 9 10; do
        for port in /sys/class/virtio-ports/vport*; do
            [ "$(cat "$port/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
            exec /usr/sbin/qemu-ga -m virtio-serial -p "/dev/${port##*/}" -t /run -l /run/qemu-ga.log
        done
        sleep 0.5
    done
) &
nc -ll -p 8080 -e /bin/guest-hello >/dev/null 2>&1 &
# Hotplug, without udev: memory the kernel adds is onlined at once (movable, so virtio-mem can
# take it back). With corral.hotplug on the kernel command line (hotplug tests: other guests pay
# nothing), every second CPUs that appeared are brought online (not with corral.nocpuonline: a
# guest that refuses vCPUs) and a line goes to ttyS0 whenever the online CPUs, MemTotal or the
# SCSI disks (name:serial, from VPD page 0x80) change. Shell builtins mostly: TCG forks are dear.
echo online_movable > /sys/devices/system/memory/auto_online_blocks 2>/dev/null
read -r cmdline < /proc/cmdline
case " $cmdline " in *" corral.hotplug "*) (
    last=""
    while true; do
        case " $cmdline " in *" corral.nocpuonline "*) ;; *)
            for cpu in /sys/devices/system/cpu/cpu[0-9]*/online; do
                read -r value < "$cpu" 2>/dev/null && [ "$value" = 0 ] && echo 1 > "$cpu" 2>/dev/null
            done ;;
        esac
        disks=""
        for dev in /sys/block/sd*; do
            [ -e "$dev" ] && disks="$disks${dev##*/}:$(tr -dc 'A-Za-z0-9-' < "$dev/device/vpd_pg80" 2>/dev/null),"
        done
        read -r cpus < /sys/devices/system/cpu/online
        while read -r key value rest; do [ "$key" = MemTotal: ] && break; done < /proc/meminfo
        state="cpus=$cpus memtotal_kib=$value scsi=$disks"
        [ "$state" != "$last" ] && echo "CORRAL-GUEST-STATE $state" > /dev/ttyS0
        last=$state
        sleep 1
    done
) & ;; esac
echo "CORRAL-GUEST-READY uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
if [ "$(head -c 2 /mnt/cidata/user-data 2>/dev/null)" = "#!" ]; then
    sh /mnt/cidata/user-data </dev/null >/dev/ttyS0 2>&1 &
fi
# The VGA text console (tty1: what the VNC display shows): a banner and a shell with its own
# prompt, respawned. The serial console above stays the one tests read.
echo "CORRAL-GUEST-VGA $(hostname)" > /dev/tty1 2>/dev/null
(
    while [ -e /dev/tty1 ]; do
        setsid sh -c 'PS1="corral-guest:tty1# "; export PS1; exec sh -i </dev/tty1 >/dev/tty1 2>&1'
        sleep 1
    done
) &
# A shell on the serial console, respawned, so a console session can type commands.
while true; do
    setsid sh -c 'exec sh </dev/ttyS0 >/dev/ttyS0 2>&1'
done
INIT
chmod +x initramfs/init
(cd initramfs && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initrd.gz.tmp.$$"
# Unique temporary names, renamed into place: concurrent builds never mix their files.
mv "$out/vmlinuz.tmp.$$" "$out/vmlinuz"
mv "$out/initrd.gz.tmp.$$" "$out/initrd.gz"
echo "$stamp" > "$out/VERSION"
echo "guest built in $out ($kpkg)"

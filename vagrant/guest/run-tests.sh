#!/bin/sh
# Runs inside a vagrant/matrix guest: the host copies this file to /work/guest.sh on the work disk, and
# the image's init (guest/init.sh) runs it as PID 1's only job. It lives on the work disk, so changing
# it needs no image rebuild. Inputs on the work disk: suite (the Debian suite's name), env (exports of
# forwarded host variables), optional cmd.sh (run instead of the tests) and no-install (skip install).
# Output goes to the second serial port (clean, no kernel messages) and to results/guest.log; lines
# starting with @@DG are for the host.
stty -F /dev/ttyS1 raw -echo 2>/dev/null
for d in /tmp /run /dev/shm; do mkdir -p "$d"; mountpoint -q "$d" || mount -t tmpfs tmpfs "$d"; done
mkdir -p /dev/pts; mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts
# devtmpfs has no /dev/fd or /dev/std* links (udev/systemd add them on real systems); nft 0.9.8
# reads `nft -f -` through /dev/stdin.
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
for n in 0:stdin 1:stdout 2:stderr; do
    [ -e "/dev/${n#*:}" ] || ln -s "/proc/self/fd/${n%:*}" "/dev/${n#*:}"
done
suite=$(cat /work/suite)
hostname "dg-$suite" 2>/dev/null
ip link set lo up
mkdir -p /work/results
# Unbuffered: pytest progress reaches the host as it happens, not when the pipe buffer fills.
export HOME=/root TMPDIR=/tmp LANG=C.UTF-8 PYTHONUNBUFFERED=1
export DG_SRC=/work/project DG_RESULTS=/work/results DG_VENV=/opt/dockerguard-venv
export PIP_NO_INDEX=1 PIP_FIND_LINKS=/work/wheels PIP_DISABLE_PIP_VERSION_CHECK=1
export PATH="$DG_VENV/bin:$PATH"
# Tells tests they run in a matrix guest (the lint test leaves shellcheck to the host).
export DOCKERGUARD_VM_GUEST="$suite"
# shellcheck source=/dev/null  # written by the host at run time
[ -f /work/env ] && . /work/env

prov() { sh /work/project/vagrant/provision.sh "$@"; }

phase() {  # phase NAME CMD...: run, time and report one step
    name=$1; shift
    echo "@@DG phase-start $name"
    t0=$(date +%s)
    "$@"
    rc=$?
    echo "@@DG phase-end $name rc=$rc secs=$(( $(date +%s) - t0 ))"
    return $rc
}

main() {
    echo "@@DG start"
    prov info | sed 's/^/@@DG info /'
    prov info >/work/results/info.env
    rc=0
    if [ ! -e /work/no-install ]; then
        phase install prov install || rc=$?
    fi
    if [ "$rc" = 0 ]; then
        if [ -s /work/cmd.sh ]; then
            phase cmd sh /work/cmd.sh || rc=$?
        else
            phase test prov test || rc=$?
        fi
    fi
    echo "$rc" >/work/results/rc
    echo "@@DG done rc=$rc"
}
main </dev/null 2>&1 | tee /work/results/guest.log >/dev/ttyS1
sync

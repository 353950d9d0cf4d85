#!/bin/sh
# Shared provisioning for dockerguard test machines: the one place that knows which distro
# packages a test box needs, how to install dockerguard into a venv and how to run the suite.
# Used by vagrant/Vagrantfile (real boxes, online) and vagrant/matrix (qemu guests, offline:
# packages are baked into the image, wheels come from PIP_FIND_LINKS with PIP_NO_INDEX=1).
#
#   provision.sh packages [FAMILY]   print the distro packages, one per line
#                                    (FAMILY: debian ubuntu rhel alpine; default: this machine)
#   provision.sh install             install missing packages, make the venv, pip install -e .[test,libiptc]
#   provision.sh test                run unit + integration tests as root; exit code propagated
#   provision.sh info                print kernel/userland versions as KEY=VALUE lines
#
# Environment: DG_SRC (project root, default: this script's parent directory),
# DG_VENV (default /opt/dockerguard-venv), DG_EXTRAS (default test,libiptc: the boxes test the libiptc
# commit path too; without libiptc the iptables-legacy driver commits with iptables-legacy-restore),
# DG_RESULTS (directory for junit XML; unset: none), DG_PYTEST_ARGS (extra pytest arguments),
# DG_TEST_DIRS (default "tests/unit tests/integration").
set -eu

here=$(cd "$(dirname "$0")" && pwd)
DG_SRC=${DG_SRC:-$(dirname "$here")}
DG_VENV=${DG_VENV:-/opt/dockerguard-venv}
DG_EXTRAS=${DG_EXTRAS:-test,libiptc}
DG_TEST_DIRS=${DG_TEST_DIRS:-tests/unit tests/integration}

log() { printf '[provision] %s\n' "$*" >&2; }

detect_family() {
    # ID_LIKE covers derivatives (Rocky/Alma: "rhel centos fedora", Ubuntu: "debian").
    [ -r /etc/os-release ] || { echo unknown; return; }
    # shellcheck disable=SC1091  # a system file, read at run time
    ids=$(. /etc/os-release; echo "${ID:-} ${ID_LIKE:-}")
    for id in $ids; do
        case $id in
            debian | ubuntu) echo debian; return ;;
            rhel | centos | fedora | rocky | almalinux) echo rhel; return ;;
            alpine) echo alpine; return ;;
        esac
    done
    echo unknown
}

# Package lists. gcc + Python headers are needed because python-iptables (the libiptc extra) ships only an sdist
# with a small C extension. kmod: the kernel autoloads nf_* modules through /sbin/modprobe. ipset: the
# iptables drivers keep large source groups and the ban sets in ipsets.
packages() {
    case $1 in
        debian | ubuntu)
            # iptables ships both iptables-legacy and iptables-nft; nftables pulls libnftables1
            # which the pip-nftables module loads with ctypes.
            echo nftables iptables ipset iproute2 kmod procps \
                python3 python3-venv python3-dev gcc libc6-dev ;;
        rhel)
            # RHEL 9 has no iptables-legacy in the base repos: install_packages adds it from
            # EPEL when it can. iptables-libs carries libip4tc/libxtables for python-iptables.
            echo nftables iptables-nft iptables-libs ipset iproute kmod procps-ng \
                python3 python3-pip python3-devel gcc ;;
        alpine)
            echo nftables iptables ip6tables ipset iproute2 kmod procps \
                python3 py3-pip python3-dev gcc musl-dev linux-headers ;;
        *)
            log "unknown distro family '$1'"; return 1 ;;
    esac | tr ' ' '\n' | sed '/^$/d'
}

missing_packages() {
    # Print the packages of this family that are not installed (offline images: nothing).
    fam=$1
    for p in $(packages "$fam"); do
        case $fam in
            debian | ubuntu)
                dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p" ;;
            rhel) rpm -q "$p" >/dev/null 2>&1 || echo "$p" ;;
            alpine) apk info -e "$p" >/dev/null 2>&1 || echo "$p" ;;
        esac
    done
}

install_packages() {
    fam=$(detect_family)
    missing=$(missing_packages "$fam")
    if [ -z "$missing" ]; then
        log "distro packages already installed"
    else
        # shellcheck disable=SC2086  # word splitting of the package list is intended
        case $fam in
            debian)
                export DEBIAN_FRONTEND=noninteractive
                apt-get update -q
                apt-get install -y -q --no-install-recommends $missing ;;
            rhel)
                dnf install -y $missing ;;
            alpine)
                apk add --no-cache $missing ;;
            *)
                log "cannot install packages on an unknown distro"; return 1 ;;
        esac
    fi
    if [ "$fam" = rhel ] && ! command -v iptables-legacy >/dev/null 2>&1; then
        # Best effort: without it the iptables-legacy backend tests skip, the rest still run.
        { dnf install -y epel-release && dnf install -y iptables-legacy; } ||
            log "iptables-legacy not available (EPEL unreachable?); its tests will skip"
    fi
}

install_venv() {
    py=${PYTHON:-python3}
    if [ ! -x "$DG_VENV/bin/python" ]; then
        # System site packages: lets a distro python3-nftables serve as a fallback.
        "$py" -m venv --system-site-packages "$DG_VENV"
    fi
    # Old distro pips (bullseye: 20.3) cannot do PEP 660 editable installs, and old bundled
    # setuptools cannot read pyproject metadata: upgrade both first.
    "$DG_VENV/bin/python" -m pip install -q --upgrade pip
    "$DG_VENV/bin/python" -m pip install -q --upgrade "setuptools>=61" wheel
    # Build with the venv's setuptools: an isolated build env per package costs minutes
    # under emulation (qemu TCG) and adds nothing on a throw-away test box.
    "$DG_VENV/bin/python" -m pip install -q --no-build-isolation -e "${DG_SRC}[${DG_EXTRAS}]"
    case ",$DG_EXTRAS," in
        *,libiptc,*) modules="dockerguard, nftables, iptc" ;;
        *) modules="dockerguard, nftables" ;;
    esac
    "$DG_VENV/bin/python" -c "import $modules" &&
        log "dockerguard installed in $DG_VENV"
}

run_tests() {
    [ "$(id -u)" = 0 ] || { log "integration tests need root"; return 1; }
    cd "$DG_SRC"
    rc=0
    for d in $DG_TEST_DIRS; do
        [ -e "$d" ] || { log "no $d, skipped"; continue; }
        set -- -q -rs
        if [ -n "${DG_RESULTS:-}" ]; then
            mkdir -p "$DG_RESULTS"
            set -- "$@" --junitxml "$DG_RESULTS/$(basename "$d").xml"
        fi
        log "pytest $d"
        # shellcheck disable=SC2086  # DG_PYTEST_ARGS is a user-supplied argument list
        "$DG_VENV/bin/python" -m pytest "$d" "$@" ${DG_PYTEST_ARGS:-} || {
            r=$?
            # 5 = nothing collected: an empty directory is not a failing box.
            if [ "$r" = 5 ]; then log "$d: no tests collected"; else rc=$r; fi
        }
    done
    return "$rc"
}

info() {
    # First line of each tool's version output; "-" when the tool is missing.
    ver() { "$@" 2>/dev/null | head -n1 || true; }
    echo "kernel=$(uname -r)"
    # shellcheck disable=SC1091  # a system file, read at run time
    echo "distro=$(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-unknown}")"
    echo "python=$(ver python3 --version | sed 's/^Python //')"
    echo "iptables_legacy=$(ver iptables-legacy --version)"
    echo "iptables_nft=$(ver iptables-nft --version)"
    echo "nft=$(ver nft --version)"
    # shellcheck disable=SC2012  # fixed library paths, no odd names
    echo "libnftables=$(ls /usr/lib/*/libnftables.so.* /usr/lib64/libnftables.so.* /usr/lib/libnftables.so.* 2>/dev/null | tr '\n' ' ')"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
    packages) packages "${1:-$(detect_family)}" ;;
    install) install_packages; install_venv ;;
    install-venv) install_venv ;;
    test) run_tests ;;
    info) info ;;
    *) echo "usage: $0 {packages [FAMILY]|install|install-venv|test|info}" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The device side on an emulated Raspberry Pi: Debian 12 arm64 under QEMU user mode, with the
# CPU model of a Pi 4 (cortex-a72: ARMv8.0, no dot product, no fp16) and a Pi 5 (cortex-a76:
# ARMv8.2, dot product, fp16). See docs/arm.md for what this proves and what it cannot (speed).
#
#  1. a Debian 12 arm64 root filesystem (mmdebstrap), cached in $EDGETL_ARM_CACHE;
#  2. the project's wheel, built fresh from this tree, installed there from the package index
#     (wheels only) in a venv: what `pip install edgetl` gives a Pi;
#  3. on x86 (the workstation venv): digits 0-7 -> an int8 image bundle for rpi4-ort-int8, and
#     real Rotten Tomatoes reviews -> a text bundle for the same target;
#  4. the same device commands on x86 (a venv with the same onnxruntime as the Pi gets) and
#     under each QEMU CPU model: doctor, doctor BUNDLE, predict and evaluate (104 images of
#     digits 0-7), retrain (adds 8 and 9), evaluate (130 images, all ten), rollback, predict;
#     predict and evaluate on 100 reviews;
#     and a tiny OpenVINO int8 convolution (the ARMv8.0 gap, docs/arm.md);
#  5. a table (CPU model, command, result, agreement with x86, seconds) and a JSON summary.
#
# Usage: sudo make test-arm        (or: sudo scripts/test_arm.sh)
# Environment:
#   EDGETL_ARM_CACHE       root filesystem, its venv and the x86 reference venv
#                          (default ~/.cache/edgetl-arm; about 1.3 GB)
#   EDGETL_ARM_CPUS        QEMU CPU models (default "cortex-a72 cortex-a76")
#   EDGETL_ARM_IMAGE_SIZE  input size of the image bundle (default 128; 224 is the backbone's
#                          own, ~3x slower under emulation, same kernels)
#   EDGETL_ARM_FRESH_VENV  1: recreate the venv inside the root filesystem
#   EDGETL_ARM_KEEP        1: keep the work folder (bundles, outputs) and say where
#   EDGETL_ARM_SUMMARY     where to write the JSON summary (default: in the work folder)
#   WORKSTATION_PYTHON     builds the bundles (default .venv/bin/python, from `make venv`)
# Exit status: 0 when every step passed; 1 with one line per failure otherwise.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${EDGETL_ARM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgetl-arm}
read -r -a CPUS <<<"${EDGETL_ARM_CPUS:-cortex-a72 cortex-a76}"
IMAGE_SIZE=${EDGETL_ARM_IMAGE_SIZE:-128}
WORKSTATION_PYTHON=${WORKSTATION_PYTHON:-.venv/bin/python}
SUITE=bookworm
ROOTFS_PACKAGES=python3,python3-venv,python3-pip,ca-certificates
ROOTFS=$CACHE/rootfs-$SUITE-arm64
ROOTFS_STAMP=$ROOTFS.ok
DEVICE_VENV=/opt/edgetl-venv # inside the root filesystem
X86_VENV=$CACHE/x86-venv
REFERENCE=x86-64
MOUNTED=()
WORK_IN= # the work folder as the chroot sees it; $ROOTFS$WORK_IN on this machine
T0=$(date +%s)

say() { printf 'test_arm: %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# --------------------------------------------------------------------------- clean-up

unmount_last() {
    local target=${MOUNTED[-1]}
    umount "$target" 2>/dev/null || umount -l "$target" || say "could not unmount $target"
    unset 'MOUNTED[-1]'
}

cleanup() {
    local rc=$?
    while [ ${#MOUNTED[@]} -gt 0 ]; do unmount_last; done
    rm -f "$ROOTFS"/tmp/perf-*.map # oneDNN's JIT leaves one per process inside
    if [ -n "$WORK_IN" ] && [ -d "$ROOTFS$WORK_IN" ]; then
        if [ "${EDGETL_ARM_KEEP:-0}" = 1 ]; then
            say "work folder kept: $ROOTFS$WORK_IN"
        else
            rm -rf "${ROOTFS:?}$WORK_IN"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# bind SRC DEST: a private bind mount (nothing propagates back to the host's /proc, /sys, /dev)
bind() {
    mount --bind "$1" "$2" || fail "could not bind-mount $1 on $2"
    MOUNTED+=("$2")
    mount --make-private "$2" || fail "could not make $2 a private mount"
}

# --------------------------------------------------------------------------- this machine

preflight() {
    [ "$(id -u)" = 0 ] || fail "needs root (chroot and bind mounts): run 'sudo make test-arm'"
    [ "$(uname -m)" = x86_64 ] || fail "runs on an x86-64 machine (it compares the Pi with x86); this is $(uname -m)"
    [ -x "$WORKSTATION_PYTHON" ] || fail "$WORKSTATION_PYTHON not found: run 'make venv' first (it builds the bundles)"
    local missing=()
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    if [ ${#missing[@]} -gt 0 ]; then
        command -v apt-get >/dev/null || fail "install ${missing[*]} (Debian/Ubuntu packages) and run again"
        say "installing ${missing[*]} (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
            || fail "apt-get install ${missing[*]} failed; install them by hand and run again"
    fi
    # QEMU runs the arm64 binaries through the kernel's binfmt_misc handler
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || fail "could not mount binfmt_misc; run: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc"
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || fail "the qemu-aarch64 binfmt handler is not enabled; run: update-binfmts --enable qemu-aarch64"
    mkdir -p "$CACHE"
    # one run at a time per cache: the root filesystem, its mounts and venv are shared
    exec 9>"$CACHE/lock"
    flock -n 9 || fail "another test_arm run holds $CACHE/lock; wait for it, or set EDGETL_ARM_CACHE"
}

# --------------------------------------------------------------------------- root filesystem

build_rootfs() {
    local recipe="mmdebstrap --arch=arm64 --variant=apt --include=$ROOTFS_PACKAGES $SUITE"
    if [ -d "$ROOTFS" ] && [ "$(cat "$ROOTFS_STAMP" 2>/dev/null)" = "$recipe" ]; then
        say "root filesystem: cached ($ROOTFS)"
        return
    fi
    say "root filesystem: building Debian 12 arm64 with mmdebstrap (~7 min, ~270 MB)"
    rm -rf "$ROOTFS" "$ROOTFS.tmp" "$ROOTFS_STAMP"
    # built beside and renamed into place: an interrupted build never looks cached
    $recipe "$ROOTFS.tmp" >"$CACHE/mmdebstrap.log" 2>&1 \
        || { rm -rf "$ROOTFS.tmp"; fail "mmdebstrap failed (log: $CACHE/mmdebstrap.log)"; }
    mv "$ROOTFS.tmp" "$ROOTFS"
    echo "$recipe" >"$ROOTFS_STAMP"
}

mount_rootfs() {
    local m
    for m in proc sys dev; do
        # a run killed with SIGKILL leaves its mounts; we hold the lock, so they are nobody's
        while mountpoint -q "$ROOTFS/$m"; do umount -l "$ROOTFS/$m"; done
        bind "/$m" "$ROOTFS/$m"
    done
    # pip inside must resolve names and trust this network's certificates
    cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
    local ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
    [ -f "$ca" ] || ca=/etc/ssl/certs/ca-certificates.crt
    cp "$ca" "$ROOTFS/etc/ssl/certs/host-ca.crt"
    WORK_IN=$(mktemp -d "$ROOTFS/tmp/edgetl-arm.XXXXXX")
    WORK_IN=${WORK_IN#"$ROOTFS"}
    mkdir -p "$ROOTFS$WORK_IN"/{dist,out,scripts}
    cp scripts/arm_cpu_probe.py scripts/arm_openvino_probe.py "$ROOTFS$WORK_IN/scripts/"
}

# in_chroot CPU COMMAND...: run inside the root filesystem as that QEMU CPU model. env -i keeps
# this machine's pip configuration out; QEMU_CPU must be inside it, or QEMU runs its "max" CPU.
in_chroot() {
    local cpu=$1
    shift
    chroot "$ROOTFS" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH="$DEVICE_VENV/bin:/usr/bin:/bin" \
        QEMU_CPU="$cpu" EDGETL_NO_PROGRESS=1 PIP_CERT=/etc/ssl/certs/host-ca.crt \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PIP_NO_INPUT=1 \
        ${EDGETL_ARM_INDEX_URL:+PIP_INDEX_URL="$EDGETL_ARM_INDEX_URL"} "$@"
}

# --------------------------------------------------------------------------- the install

build_wheel() {
    say "wheel: building from this tree"
    local src=$ROOTFS$WORK_IN/src
    mkdir -p "$src"
    # a clean copy (tracked and new files, not ignored ones): no stale build/ leaks into the wheel
    git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$src" 2>/dev/null \
        || fail "could not copy the source tree for the wheel"
    "$WORKSTATION_PYTHON" -m pip wheel -q --no-deps -w "$ROOTFS$WORK_IN/dist" "$src" >"$ROOTFS$WORK_IN/wheel.log" 2>&1 \
        || fail "building the wheel failed (log: $ROOTFS$WORK_IN/wheel.log)"
    WHEEL=$(cd "$ROOTFS$WORK_IN/dist" && ls edgetl-*.whl)
}

install_device() {
    if [ "${EDGETL_ARM_FRESH_VENV:-0}" = 1 ]; then rm -rf "${ROOTFS:?}$DEVICE_VENV"; fi
    if [ ! -x "$ROOTFS$DEVICE_VENV/bin/python" ]; then
        in_chroot cortex-a72 python3 -m venv "$DEVICE_VENV" || fail "could not create $DEVICE_VENV in the root filesystem"
    fi
    say "device install: pip install $WHEEL (wheels only) in the emulated Pi"
    local log=$ROOTFS$WORK_IN/pip-device.log
    in_chroot cortex-a72 pip uninstall -q -y edgetl >/dev/null 2>&1 || true
    in_chroot cortex-a72 pip install -q --only-binary=:all: "$WORK_IN/dist/$WHEEL" >"$log" 2>&1 \
        || fail "pip install of the wheel failed in the emulated Pi: $(tail -n 1 "$log")"
    in_chroot cortex-a72 pip freeze >"$ROOTFS$WORK_IN/device-freeze.txt" 2>/dev/null \
        || fail "pip freeze failed in the emulated Pi"
}

# The x86 reference: the same wheel with the same versions of the runtimes and numpy that the
# Pi got (plain onnxruntime, not the training wheel): differences are then the CPU's alone.
install_x86_reference() {
    say "x86 reference: the same wheel and runtime versions in $X86_VENV"
    [ -x "$X86_VENV/bin/python" ] || python3 -m venv "$X86_VENV" || fail "could not create $X86_VENV"
    local reqs=$ROOTFS$WORK_IN/x86-requirements.txt log=$ROOTFS$WORK_IN/pip-x86.log
    # the wheel's own requirements, with the Pi's versions pinned and its plain onnxruntime in
    # place of the training wheel the x86 marker asks for (the two must never be mixed)
    python3 scripts/arm_helper.py x86-requirements "$ROOTFS$WORK_IN/dist/$WHEEL" "$ROOTFS$WORK_IN/device-freeze.txt" >"$reqs" \
        || fail "could not read the wheel's requirements"
    {
        "$X86_VENV/bin/python" -m pip uninstall -q -y edgetl onnxruntime-training-cpu
        "$X86_VENV/bin/python" -m pip install -q --only-binary=:all: --no-deps "$ROOTFS$WORK_IN/dist/$WHEEL"
        "$X86_VENV/bin/python" -m pip install -q --only-binary=:all: -r "$reqs"
    } >"$log" 2>&1 || fail "installing the x86 reference failed: $(grep -v 'is ignored' "$log" | tail -n 1)"
}

make_data() {
    say "bundles: digits 0-7 -> rpi4-ort-int8 image bundle (${IMAGE_SIZE} px), reviews -> text bundle (x86, torch)"
    EDGETL_NO_PROGRESS=1 "$WORKSTATION_PYTHON" scripts/arm_helper.py make-data "$ROOTFS$WORK_IN/data" \
        --image-size "$IMAGE_SIZE" >"$ROOTFS$WORK_IN/make-data.log" 2>&1 \
        || fail "building the bundles on x86 failed: $(tail -n 1 "$ROOTFS$WORK_IN/make-data.log")"
}

# --------------------------------------------------------------------------- the steps

# record MACHINE STEP RC SECONDS [STATUS NOTE]: one line of steps.jsonl
record() {
    python3 - "$ROOTFS$WORK_IN/steps.jsonl" "$@" <<'PY'
import json, sys
path, machine, step, rc, seconds, status, note, out, err, *argv = sys.argv[1:]
row = {"cpu": machine, "step": step, "rc": int(rc), "seconds": round(float(seconds), 2), "argv": argv,
       "stdout": out, "stderr": err, "status": status or None, "note": note or None}
open(path, "a").write(json.dumps(row) + "\n")
PY
}

# step MACHINE STEP COMMAND...: run an edgetl command (or a probe) on x86 or under a QEMU CPU,
# with paths given relative to the work folder (@/...), and record it. Never exits on failure:
# every step is reported, and the report decides the exit status.
step() {
    local machine=$1 name=$2
    shift 2
    local args=() a base
    if [ "$machine" = "$REFERENCE" ]; then base=$ROOTFS$WORK_IN; else base=$WORK_IN; fi
    for a in "$@"; do args+=("${a//@/$base}"); done
    local out=$ROOTFS$WORK_IN/out/$machine/$name
    mkdir -p "$(dirname "$out")"
    local t=$(now) rc=0 status="" note=""
    if [ "$machine" = "$REFERENCE" ]; then
        (cd "$ROOTFS$WORK_IN" && env EDGETL_NO_PROGRESS=1 PATH="$X86_VENV/bin:$PATH" "${args[@]}") >"$out.json" 2>"$out.err" || rc=$?
    else
        in_chroot "$machine" "${args[@]}" >"$out.json" 2>"$out.err" || rc=$?
    fi
    local seconds
    seconds=$(since "$t")
    # `doctor BUNDLE` (the conformance check) is being merged on main: until then this edgetl's
    # doctor takes no BUNDLE and argparse exits 2
    if [ "$name" = doctor-bundle ] && [ "$rc" = 2 ] && grep -q "unrecognized arguments" "$out.err"; then
        status=SKIPPED
        note="doctor takes no BUNDLE argument in this edgetl (the conformance check is not merged yet)"
    fi
    record "$machine" "$name" "$rc" "$seconds" "$status" "$note" "$out.json" "$out.err" "${args[@]}"
    say "$(printf '%-10s %-16s exit %s  %6.1f s' "$machine" "$name" "$rc" "$seconds")${status:+  $status}"
}

# device_steps MACHINE: every device command, in order, on one machine.
device_steps() {
    local m=$1 b=@/$1-image-bundle
    rm -rf "$ROOTFS$WORK_IN/$m-image-bundle"
    cp -a "$ROOTFS$WORK_IN/data/image-bundle" "$ROOTFS$WORK_IN/$m-image-bundle"
    step "$m" doctor edgetl doctor --json
    step "$m" doctor-bundle edgetl doctor "$b" --json
    step "$m" predict edgetl predict "$b" @/data/digits/test-old --json
    step "$m" evaluate edgetl evaluate "$b" @/data/digits/test-old --json
    step "$m" retrain edgetl retrain "$b" @/data/digits/retrain --json
    step "$m" evaluate-retrained edgetl evaluate "$b" @/data/digits/test --json
    step "$m" rollback edgetl rollback "$b" --json
    step "$m" predict-rolled-back edgetl predict "$b" @/data/digits/test-old/3 --json
    step "$m" text-predict edgetl predict @/data/text-bundle @/data/reviews/test.csv --json
    step "$m" text-evaluate edgetl evaluate @/data/text-bundle @/data/reviews/test.csv --json
    step "$m" openvino-int8 python @/scripts/arm_openvino_probe.py
}

# check_cpu CPU: what the emulated CPU really is (HWCAP and MIDR read inside it), the fake
# /proc/cpuinfo rendered from that (import onnxruntime segfaults on the host's x86 one), and
# proof that QEMU_CPU applied: a76 has the dot product (asimddp), a72 has not.
check_cpu() {
    local cpu=$1 probe=$ROOTFS$WORK_IN/out/$1/cpu.json
    mkdir -p "$(dirname "$probe")"
    in_chroot "$cpu" python3 "$WORK_IN/scripts/arm_cpu_probe.py" >"$probe" \
        || fail "$cpu: the CPU probe failed inside the root filesystem"
    in_chroot "$cpu" python3 "$WORK_IN/scripts/arm_cpu_probe.py" --cpuinfo >"$ROOTFS$WORK_IN/cpuinfo-$cpu" \
        || fail "$cpu: could not render /proc/cpuinfo"
    local features
    features=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("model"), " ".join(d["features"]))' "$probe")
    case "$cpu" in
        cortex-a72 | cortex-a53) [[ " $features " != *" asimddp "* ]] || fail "$cpu: the emulated CPU has asimddp; QEMU_CPU did not apply" ;;
        cortex-a76 | neoverse-n1) [[ " $features " == *" asimddp "* ]] || fail "$cpu: no asimddp in the emulated CPU; QEMU_CPU did not apply" ;;
    esac
    say "$cpu: emulated CPU is ${features%% *}, features: ${features#* }"
    bind "$ROOTFS$WORK_IN/cpuinfo-$cpu" "$ROOTFS/proc/cpuinfo"
    grep -q "^Features" "$ROOTFS/proc/cpuinfo" || fail "$cpu: the fake /proc/cpuinfo is not in place"
}

phase() { # phase NAME START: record how long a phase took
    printf '{"phase": "%s", "seconds": %s}\n' "$1" "$(since "$2")" >>"$ROOTFS$WORK_IN/phases.jsonl"
}

main() {
    local t
    preflight
    t=$(now); build_rootfs; local rootfs_t=$t
    mount_rootfs
    phase rootfs "$rootfs_t"
    t=$(now); build_wheel; install_device; phase device-install "$t"
    t=$(now); make_data; phase bundles-on-x86 "$t"
    t=$(now); install_x86_reference; device_steps "$REFERENCE"; phase x86-reference "$t"
    local cpu
    for cpu in "${CPUS[@]}"; do
        t=$(now)
        check_cpu "$cpu"
        device_steps "$cpu"
        unmount_last # this CPU's /proc/cpuinfo
        phase "$cpu" "$t"
    done
    local summary=${EDGETL_ARM_SUMMARY:-$ROOTFS$WORK_IN/summary.json}
    python3 scripts/arm_helper.py report "$ROOTFS$WORK_IN/steps.jsonl" --json "$summary" \
        --phases "$ROOTFS$WORK_IN/phases.jsonl" --freeze "$ROOTFS$WORK_IN/device-freeze.txt" \
        --cpu-dir "$ROOTFS$WORK_IN/out" --total-seconds "$(($(date +%s) - T0))"
}

main "$@"

#!/usr/bin/env bash
# The aarch64 agent, built and run for real: cross-compiled with Debian's gcc-aarch64-linux-gnu (ring's C
# and the link), and run under qemu-user through binfmt_misc, so that the kernel starts an aarch64
# binary as it would on a Pi, including the new version the agent starts when it updates itself.
#
#   scripts/aarch64.sh prepare   installs what is missing (as root: apt packages, the rustup target, the
#                                binfmt_misc entry); without root it says what is missing and fails
#   scripts/aarch64.sh build     the agent twice, this version and the next (for the update test), into
#                                target/aarch64/edgemesh-agent and target/aarch64/edgemesh-agent-next
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=aarch64-unknown-linux-gnu
BINFMT=/proc/sys/fs/binfmt_misc

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

missing() {
  local what=()
  command -v aarch64-linux-gnu-gcc >/dev/null || what+=(gcc-aarch64-linux-gnu)
  [ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || what+=(libc6-dev-arm64-cross)
  command -v qemu-aarch64 >/dev/null || what+=(qemu-user)
  rustup target list --installed 2>/dev/null | grep -qx "$TARGET" || what+=("rustup:$TARGET")
  [ -e "$BINFMT/qemu-aarch64" ] || [ -e "$BINFMT/edgemesh-aarch64" ] || what+=(binfmt)
  printf '%s\n' "${what[@]}"
}

prepare() {
  local need
  need=$(missing)
  [ -z "$need" ] && return 0
  [ "$(id -u)" = 0 ] || die "the aarch64 agent needs: $(echo $need) (run scripts/aarch64.sh prepare as root)"
  local pkgs=()
  for item in $need; do
    case $item in rustup:*|binfmt) ;; *) pkgs+=("$item") ;; esac
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null \
      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null; }
  fi
  if grep -qx "rustup:$TARGET" <<<"$need"; then rustup target add "$TARGET"; fi
  if grep -qx binfmt <<<"$need"; then
    [ -e "$BINFMT/register" ] || mount -t binfmt_misc binfmt_misc "$BINFMT"
    # qemu's own entry for aarch64 ELF executables (qemu-binfmt-conf.sh); F: the interpreter is opened
    # now, so it is found from any mount namespace. Its loader and libc: QEMU_LD_PREFIX (the tests set
    # it to /usr/aarch64-linux-gnu).
    printf '%s' ':edgemesh-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64:F' \
      > "$BINFMT/register"
  fi
  need=$(missing)
  [ -z "$need" ] || die "still missing for the aarch64 agent: $(echo $need)"
}

build() {
  local version next
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
  next="${version%.*}.$(( ${version##*.} + 1 ))"
  mkdir -p target/aarch64
  EDGEMESH_AGENT_VERSION=$next cargo build -p edgemesh-agent --bin edgemesh-agent --target "$TARGET"
  cp "target/$TARGET/debug/edgemesh-agent" target/aarch64/edgemesh-agent-next
  cargo build -p edgemesh-agent --bin edgemesh-agent --target "$TARGET"
  cp "target/$TARGET/debug/edgemesh-agent" target/aarch64/edgemesh-agent
}

case ${1:-} in
  prepare) prepare ;;
  build) build ;;
  *) die "usage: $0 prepare|build" ;;
esac

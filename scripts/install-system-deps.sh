#!/usr/bin/env bash
# Installs the Debian packages (and the npm package, Azurite) whose servers the tests (and
# benchmarks) start on loopback, when missing.
set -euo pipefail
# Azurite, the Azure Blob Storage emulator the tests start (npm package, pinned), into .azurite/
AZURITE_VERSION=3.37.0
azurite_dir="$(cd "$(dirname "$0")/.." && pwd)/.azurite"
if ! grep -qs "\"version\": \"$AZURITE_VERSION\"" "$azurite_dir/node_modules/azurite/package.json"; then
  if command -v npm >/dev/null; then
    mkdir -p "$azurite_dir"
    npm install --prefix "$azurite_dir" --no-audit --no-fund --no-save --silent "azurite@$AZURITE_VERSION"
  else
    echo "install-system-deps: npm not found; the Azure Blob tests will be skipped" >&2
  fi
fi
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
# the browser test drives the Prefect UI in Debian's chromium (playwright, no browser download);
# the package pulls in the libraries it needs; a font so pages render text
command -v chromium >/dev/null || need+=(chromium)
[ -e /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf ] || need+=(fonts-liberation)
# the benchmarks (BENCH=1, from `make bench`) compare against rclone and OpenSSH's sftp client
if [ "${BENCH:-}" = 1 ]; then
  command -v rclone >/dev/null || need+=(rclone)
  command -v sftp >/dev/null || need+=(openssh-client)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "install-system-deps: not root; missing ${need[*]} (the tests that need them will be skipped)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -qq
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the service on install where it can; the tests run their own sshd.
for svc in ssh postgresql; do systemctl stop "$svc" 2>/dev/null || service "$svc" stop 2>/dev/null || true; done

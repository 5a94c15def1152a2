#!/usr/bin/env bash
# Make sure a Debian bookworm base image exists for the project's Dockerfiles, and print its name.
#
#   deploy/base-image.sh            -> prints the image to use as BASE_IMAGE (last line of stdout)
#
# Order of preference:
#   1. $BASE_IMAGE (default debian:bookworm-slim) if it is already present locally;
#   2. $BASE_IMAGE pulled from its registry, if a registry can be reached;
#   3. aistudio-fleet-base:bookworm, made here with debootstrap from the host's own Debian mirror and
#      `docker import` (cached: made once, reused while it exists; FORCE_BASE=1 remakes it).
# Only the last line of stdout is the image name; everything else goes to stderr.
#
# Needs: root, docker, debootstrap (apt-get install debootstrap).
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"
LOCAL_BASE="${LOCAL_BASE_IMAGE:-aistudio-fleet-base:bookworm}"
SUITE="${DEBIAN_SUITE:-bookworm}"

log() { printf '[base-image] %s\n' "$*" >&2; }

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "using local $BASE_IMAGE"
  echo "$BASE_IMAGE"; exit 0
fi
if [ "${FORCE_BASE:-0}" != 1 ] && docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
  log "using cached $LOCAL_BASE (FORCE_BASE=1 remakes it)"
  echo "$LOCAL_BASE"; exit 0
fi
if [ "${SKIP_PULL:-0}" != 1 ] && timeout 60 docker pull -q "$BASE_IMAGE" >&2 2>/dev/null; then
  log "pulled $BASE_IMAGE"
  echo "$BASE_IMAGE"; exit 0
fi
log "$BASE_IMAGE is not local and cannot be pulled: making $LOCAL_BASE with debootstrap"

command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install -y debootstrap"; exit 1; }
[ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }

# --- the host's Debian mirrors (main archive and security), from one-line .list and deb822 .sources files
apt_entries() {  # prints "URI SUITE" for every enabled `deb` entry
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb [opts] URI SUITE COMPONENTS...
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 { print $2, $3 }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
         {
           types = ""; uris = ""; suites = ""; enabled = "yes"
           for (i = 1; i <= NF; i++) {
             line = $i; sub(/#.*/, "", line)
             if (line ~ /^[Tt]ypes:/)   { sub(/^[^:]*:[ \t]*/, "", line); types = line }
             if (line ~ /^URIs:/)       { sub(/^[^:]*:[ \t]*/, "", line); uris = line }
             if (line ~ /^Suites:/)     { sub(/^[^:]*:[ \t]*/, "", line); suites = line }
             if (line ~ /^Enabled:/)    { sub(/^[^:]*:[ \t]*/, "", line); enabled = line }
           }
           if (types !~ /(^|[ \t])deb([ \t]|$)/ || enabled == "no") next
           n = split(uris, u, /[ \t]+/); m = split(suites, s, /[ \t]+/)
           for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) if (u[a] != "" && s[b] != "") print u[a], s[b]
         }' "$f"
  done
}
MIRROR="${DEBIAN_MIRROR:-$(apt_entries | awk -v s="$SUITE" '$2 == s { print $1; exit }')}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-$(apt_entries | awk -v s="$SUITE-security" '$2 == s || $2 == s "/updates" { print $1; exit }')}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
MIRROR="${MIRROR%/}"; SECURITY_MIRROR="${SECURITY_MIRROR%/}"
log "mirror $MIRROR, security $SECURITY_MIRROR"

ROOTFS="$(mktemp -d /tmp/aistudio-base.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

start=$SECONDS
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
  log "debootstrap failed:"; tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
log "debootstrap done in $((SECONDS - start)) s"

# --- the tweaks a container base image usually carries (as Docker's own debootstrap recipe did)
# apt sources like debian:bookworm-slim's: main archive, updates and security
rm -f "$ROOTFS/etc/apt/sources.list"
cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# the host's apt settings that a build here needs too (e.g. Check-Valid-Until for a frozen mirror, proxies)
apt-config dump 2>/dev/null \
  | grep -i -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy|ftp::Proxy)' \
  >"$ROOTFS/etc/apt/apt.conf.d/90host-settings" || true
# no services start during package installs
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"; chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
echo 'force-unsafe-io' >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
# keep the package cache and translations out of images
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"$ROOTFS/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true"; Acquire::CompressionTypes::Order:: "gz";' >"$ROOTFS/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$ROOTFS/etc/apt/apt.conf.d/docker-autoremove-suggests"
# slim: no manuals, docs or translations from packages installed later (copyright files stay)
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
rm -rf "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/lintian/*
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
# no downloaded packages, indexes, logs or host identity in the image
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*
: >"$ROOTFS/etc/machine-id" 2>/dev/null || true
printf 'nameserver 127.0.0.1\n' >"$ROOTFS/etc/resolv.conf"   # replaced by Docker at run time
echo localhost >"$ROOTFS/etc/hostname"

start=$SECONDS
tar --numeric-owner -C "$ROOTFS" -c . \
  | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["bash"]' \
      --message "debootstrap --variant=minbase $SUITE $MIRROR" \
      - "$LOCAL_BASE" >/dev/null
log "imported $LOCAL_BASE in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$LOCAL_BASE" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$LOCAL_BASE"

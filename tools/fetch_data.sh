#!/usr/bin/env bash
# Put Fashion-MNIST into .data/fashion-mnist without internet access: the data
# ships in the Debian package dataset-fashion-mnist, which `apt-get download`
# fetches without root. Always exits 0 so a missing data set never fails
# `make test` by itself (the tests that need it skip with a reason).
set -uo pipefail
cd "$(dirname "$0")/.."

DEST=.data/fashion-mnist
PKG=dataset-fashion-mnist
SYS=/usr/share/datasets/fashion-mnist
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"

have_all() {  # $1: folder
    local f
    for f in $FILES; do [ -s "$1/$f" ] || return 1; done
}

give_up() {
    cat >&2 <<MSG
fetch_data: could not get Fashion-MNIST ($1).
  The tests that need it will be skipped. To get it, either
  - on Debian/Ubuntu: apt-get download $PKG && dpkg -x ${PKG}_*.deb /tmp/fm
    then copy /tmp/fm$SYS/*-ubyte.gz to $DEST/
    (as root, run 'apt-get update' first if that finds no package), or
  - on a machine with internet, download the four standard IDX files
      $FILES
    from https://github.com/zalandoresearch/fashion-mnist (data/fashion),
    copy them to $DEST/ or any folder, and set TRACETORCH_DATA=that folder.
MSG
    exit 0
}

install_from() {  # $1: folder holding the four files
    mkdir -p "$DEST" || give_up "cannot create $DEST"
    local f
    for f in $FILES; do
        cp "$1/$f" "$DEST/$f.part" && mv "$DEST/$f.part" "$DEST/$f" || give_up "copy of $f failed"
    done
    echo "fetch_data: Fashion-MNIST is in $DEST ($(du -sh "$DEST" | cut -f1))"
    exit 0
}

if have_all "$DEST"; then echo "fetch_data: Fashion-MNIST already in $DEST"; exit 0; fi
if have_all "$SYS"; then install_from "$SYS"; fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null || give_up "no apt-get/dpkg on this system"

tmp=$(mktemp -d) || give_up "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
download() { (cd "$tmp" && apt-get download -q "$PKG"); }

echo "fetch_data: apt-get download $PKG (about 30 MB)"
if ! download; then
    [ "$(id -u)" = 0 ] || give_up "apt-get download failed; as root, 'apt-get update' may help"
    echo "fetch_data: retrying after apt-get update"
    apt-get update -qq && download || give_up "apt-get download failed after apt-get update"
fi
deb=$(ls "$tmp"/${PKG}_*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || give_up "apt-get download produced no .deb"
dpkg -x "$deb" "$tmp/x" || give_up "dpkg -x $deb failed"
have_all "$tmp/x$SYS" || give_up "the package does not contain the expected files under $SYS"
install_from "$tmp/x$SYS"

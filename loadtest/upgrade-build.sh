#!/bin/sh
# Builds the second `forkpool` that `forkpool-loadtest --upgrade-to` upgrades to: the sources of
# this working tree as they are, with another package version, so that /status (and the
# worker handshake) tell the two builds apart after an in-place upgrade.
#
#   loadtest/upgrade-build.sh [VERSION]     (default: the current version with `-upgrade`)
#
# The copy of the sources and its own target directory live in $TARGET/upgrade-build/ ($TARGET
# is $CARGO_TARGET_DIR, else ./target). The first time, that target directory is seeded with
# the release dependencies already built in $TARGET (`cargo dist` first), so only
# the forkpool crate itself is compiled (about 1.5 minutes here, for its fat LTO). The last line
# printed is the binary's path.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
current=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
version=${1:-$current-upgrade}
work=$target/upgrade-build
src=$work/src
out=$work/target

# The sources: tracked and new files, not ignored ones (no target directory).
rm -rf "$src"
mkdir -p "$src" "$out"
(cd "$root" && git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$src"
# The first `version = ` line of the root manifest is the [package] one.
sed -i "0,/^version = \".*\"\$/s//version = \"$version\"/" "$src/Cargo.toml"

# Dependencies: built for the target (static glibc, `cargo dist` in .cargo/config.toml) and for
# the host (proc macros, build scripts). Their fingerprints do not depend on where the sources
# are.
host=$(rustc -vV | sed -n 's/^host: //p')
for dir in "$host/release" release; do
    if [ -d "$target/$dir/deps" ] && [ ! -d "$out/$dir/deps" ]; then
        mkdir -p "$out/$dir"
        for part in .fingerprint build deps; do
            cp -a "$target/$dir/$part" "$out/$dir/"
        done
    fi
done

# Not `-p forkpool`: with the workspace's default members selected, the dependencies' features
# are unified as in `cargo dist`, so the seeded ones are used as they are. The alias is read
# from the copy's .cargo/config.toml, so from inside the copy.
(cd "$src" && CARGO_TARGET_DIR=$out cargo dist --bin forkpool)
binary=$out/$host/release/forkpool
echo "built $("$binary" --version)" >&2
echo "$binary"

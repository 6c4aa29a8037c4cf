#!/bin/sh
# Creates empty stand-ins for every source file the cargo workspace in the
# current directory declares, so `cargo fetch --locked` can run on the
# manifests alone (the Dockerfiles' dependency layer, before the sources are
# copied). Covers src/lib.rs, src/main.rs, build.rs and every [[bin]],
# [[test]], [[bench]] and [[example]] target, with or without `path`.
# deploy/tests runs it against the real workspace and checks with
# `cargo metadata` that cargo accepts the result.
set -eu

for manifest in Cargo.toml crates/*/Cargo.toml; do
  [ -f "$manifest" ] || continue
  dir=$(dirname "$manifest")
  # Only member crates get the default targets; the root is a virtual manifest.
  if grep -q '^\[package\]' "$manifest"; then
    mkdir -p "$dir/src"
    touch "$dir/src/lib.rs" "$dir/src/main.rs" "$dir/build.rs"
  fi
  awk '
    function flush() {
      if (kind == "") return
      if (path == "") {
        if (kind == "bin") path = "src/bin/" name ".rs"
        else if (kind == "test") path = "tests/" name ".rs"
        else if (kind == "bench") path = "benches/" name ".rs"
        else if (kind == "example") path = "examples/" name ".rs"
      }
      if (path != "") print path
      kind = ""; name = ""; path = ""
    }
    /^\[\[(bin|test|bench|example)\]\]/ { flush(); kind = $0; gsub(/[][[:space:]]/, "", kind); next }
    /^\[lib\]/ { flush(); kind = "lib"; next }
    /^\[/ { flush(); next }
    kind != "" && /^[[:space:]]*name[[:space:]]*=/ { v = $0; sub(/^[^=]*=[[:space:]]*"/, "", v); sub(/".*$/, "", v); name = v }
    kind != "" && /^[[:space:]]*path[[:space:]]*=/ { v = $0; sub(/^[^=]*=[[:space:]]*"/, "", v); sub(/".*$/, "", v); path = v }
    END { flush() }
  ' "$manifest" | while IFS= read -r target; do
    mkdir -p "$dir/$(dirname "$target")"
    touch "$dir/$target"
  done
done

#!/usr/bin/env bash
# The browser tests, one command for CI: installs the npm packages
# (package-lock.json), writes the site with the release binary into a temp
# folder with the reference answers of `wgfer predict --json`, then runs
# `node --test` (the player in Node through Dawn, the page in headless Chromium).
#
# Needs: target/release/wgfer (cargo build --release), node ≥ 20, npm,
# Debian's chromium (/usr/lib/chromium/chromium, or set CHROMIUM).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
wgfer="${WGFER:-$root/target/release/wgfer}"
sample="$root/../shared/data/emotion-sample.csv"
[ -x "$wgfer" ] || { echo "no $wgfer: run cargo build --release first" >&2; exit 1; }
[ -f "$sample" ] || { echo "no $sample (the shared data folder)" >&2; exit 1; }
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cd "$here"
npm ci --no-audit --no-fund --loglevel=error

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export WGFER_WEB_ROWS="$work/rows.csv"
head -n 25 "$sample" > "$WGFER_WEB_ROWS"   # the header and 24 faces

# Dawn (the player in Node) finds no usable adapter on lavapipe;
# SwiftShader, which Debian's chromium ships as a Vulkan driver, serves it.
node_icd="${VK_ICD_FILENAMES:-}"
swiftshader=/usr/lib/chromium/vk_swiftshader_icd.json
if [ -z "$node_icd" ] && [ -f "$swiftshader" ]; then
  node_icd="$swiftshader"
fi

# Both shipped models (their layer graphs differ: fer7 is the fine variant),
# or the names or files in WGFER_WEB_MODELS. The reference: the native
# inference on the default adapter (lavapipe here) with the model the site gets.
for model in ${WGFER_WEB_MODELS:-fer5 fer7}; do
  echo "browser tests with --model $model"
  export WGFER_WEB_SITE="$work/site-$(basename "$model")"
  export WGFER_WEB_EXPECTED="$work/expected-$(basename "$model").json"
  "$wgfer" predict --model "$model" --json "$WGFER_WEB_ROWS" > "$WGFER_WEB_EXPECTED"
  "$wgfer" export-web "$WGFER_WEB_SITE" --model "$model" --batch 1,32
  VK_ICD_FILENAMES="$node_icd" node --test --test-concurrency=1 "$@"
done

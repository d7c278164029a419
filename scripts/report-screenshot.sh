#!/usr/bin/env bash
# Renders `portwarden report --format html` in headless Chromium and saves a screenshot,
# to see the page as a reviewer will. Needs Debian's chromium (apt-get install chromium).
#
#   scripts/report-screenshot.sh [POLICY] [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
policy=${1:-examples/mirror-01.toml}
out=${2:-report.png}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build -q --release
./target/release/portwarden --policy "$policy" report --format html -o "$work/report.html" -q
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/profile" --window-size=1400,1000 \
    --screenshot="$out" "file://$work/report.html" 2>/dev/null
echo "wrote $out"

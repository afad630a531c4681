#!/usr/bin/env bash
# Re-creates the gzip copies of the web app's files (crates/herald/src/web/assets/*.gz)
# that herald serves to browsers sending `Accept-Encoding: gzip`. Run it after
# changing an asset; `gzip -n` leaves out names and times, so the output depends on
# the input alone. tests/clients/test_webapp.py fails when a copy is stale.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../crates/herald/src/web/assets"
for f in *.html *.js *.css *.svg; do
    gzip -9 -n -c "$f" >"$f.gz"
done
ls -l *.gz

#!/usr/bin/env bash
# Builds the browser client into tests/browser/dist (index.html + app.js): installs the pinned npm
# packages (package-lock.json; npm's cache under $JAC_ORC_CACHE/npm), generates TypeScript from
# proto/ with buf + protoc-gen-es, bundles it with esbuild. Idempotent; offline after the first run.
set -euo pipefail
cd "$(dirname "$0")"
CACHE=${JAC_ORC_CACHE:-/var/cache/jac-splice-orc}
npm ci --no-audit --no-fund --loglevel=error --cache "$CACHE/npm"
rm -rf src/gen dist
PATH=$PWD/node_modules/.bin:$PATH buf generate ../../proto --template buf.gen.yaml
PATH=$PWD/node_modules/.bin:$PATH esbuild src/app.ts --bundle --format=esm --target=es2022 --log-level=warning --outfile=dist/app.js
cp index.html dist/
echo "browser client: $(wc -c < dist/app.js) bytes in tests/browser/dist"

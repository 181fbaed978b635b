#!/usr/bin/env bash
# Browser tests of the dashboard (/ui) in headless Chromium against the real binary (called
# by .ci/run after clients/run.sh; the binaries are built by then and nothing is rebuilt).
#
# 1. starts the fake OAuth provider (crates/tokenvisor-testkit/examples/fake_provider.rs)
#    with 1,000 grants and `tokenvisor serve` on SQLite in a temporary directory, on free
#    ports;
# 2. runs ui-tests/test_dashboard.py (selenium, Debian's chromium and chromedriver; axe-core
#    from npm for the accessibility checks), which writes a screenshot of each page to the
#    folder it prints (UI_TESTS_SCREENSHOTS, default target/ui-tests/screenshots).
# Prints "ui-tests: N passed, N failed" and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=../scripts/start-tokenvisor.sh
source "$root/scripts/start-tokenvisor.sh"
binary=$root/target/debug/tokenvisor
fake_binary=$root/target/debug/examples/fake_provider
for file in "$binary" "$fake_binary"; do
    [[ -x $file ]] || { echo "ui-tests: $file is missing; run cargo test --workspace first" >&2; exit 1; }
done
for tool in chromium chromedriver; do
    command -v "$tool" >/dev/null || {
        echo "ui-tests: $tool is missing: apt-get install -y --no-install-recommends chromium chromium-driver" >&2
        exit 1
    }
done

# Pinned, tested versions (axe-core's is in ui-tests/package-lock.json).
SELENIUM=4.51.0
CONNECTIONS=1000

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Python: a venv with selenium; axe-core from npm.
venv=${UI_TESTS_VENV:-$root/target/ui-tests-venv}
if [[ ! -x $venv/bin/python ]]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install -q --disable-pip-version-check "selenium==$SELENIUM"
(cd ui-tests && npm ci --silent --no-audit --no-fund >/dev/null)

# The fake provider prints one JSON line (its URLs, client credentials, a grant per tenant).
"$fake_binary" $(seq -f 'tenant-%04g' 1 "$CONNECTIONS") >"$work/fake.json" &
pids+=($!)
for _ in $(seq 1 100); do [[ -s $work/fake.json ]] && break; sleep 0.1; done
FAKE_PROVIDER_FILE=$work/fake.json
export FAKE_PROVIDER_FILE

# tokenvisor on SQLite in the temporary directory, on a free port.
start_tokenvisor ui-tests

export UI_TESTS_SCREENSHOTS=${UI_TESTS_SCREENSHOTS:-$root/target/ui-tests/screenshots}
export AXE_SCRIPT=$root/ui-tests/node_modules/axe-core/axe.min.js
status=0
"$venv/bin/python" ui-tests/test_dashboard.py || status=$?
if [[ $status -ne 0 ]] && grep -qE " (ERROR|WARN) " "$work/tokenvisor.log"; then
    echo "tokenvisor logged warnings or errors:"
    grep -E ' (ERROR|WARN) ' "$work/tokenvisor.log" | tail -n 20
fi
exit "$status"

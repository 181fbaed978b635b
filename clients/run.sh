#!/usr/bin/env bash
# Generated clients and schema fuzzing against the real binary (called by .ci/run after
# `cargo test --workspace`, which built target/debug/tokenvisor and the fake provider
# example; nothing is rebuilt here).
#
# 1. starts the fake OAuth provider (crates/tokenvisor-testkit/examples/fake_provider.rs)
#    and `tokenvisor serve` on SQLite in a temporary directory, on free ports;
# 2. generates a Python client (openapi-python-client) from the served /openapi.json and
#    runs clients/python/smoke.py;
# 3. generates TypeScript types (openapi-typescript) for openapi-fetch and runs
#    clients/typescript/smoke.ts;
# 4. runs schemathesis on the served document: no 5xx, every answer as documented.
# Prints "clients: N passed, N failed" and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=../scripts/start-tokenvisor.sh
source "$root/scripts/start-tokenvisor.sh"
binary=$root/target/debug/tokenvisor
fake_binary=$root/target/debug/examples/fake_provider
for file in "$binary" "$fake_binary"; do
    [[ -x $file ]] || { echo "clients: $file is missing; run cargo test --workspace first" >&2; exit 1; }
done

# Pinned, tested versions.
OPENAPI_PYTHON_CLIENT=0.29.1
SCHEMATHESIS=4.32.5
STANDARDWEBHOOKS=1.1.0
SCHEMATHESIS_EXAMPLES=${SCHEMATHESIS_EXAMPLES:-15}

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
failures=()
run_step() {
    local name=$1
    shift
    echo "== $name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$name")
    fi
}

# The fake provider prints one JSON line (its URLs, client credentials, grants).
"$fake_binary" python typescript >"$work/fake.json" &
pids+=($!)
for _ in $(seq 1 100); do [[ -s $work/fake.json ]] && break; sleep 0.1; done
FAKE_PROVIDER=$(head -n1 "$work/fake.json")
export FAKE_PROVIDER

# tokenvisor on SQLite in the temporary directory, on a free port.
start_tokenvisor clients
curl -fsS "$TOKENVISOR_URL/openapi.json" -o "$work/openapi.json"

# Python: a venv with the generator, schemathesis and the webhook library.
venv=${CLIENTS_VENV:-$root/target/clients-venv}
if [[ ! -x $venv/bin/python ]]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install -q --disable-pip-version-check \
    "openapi-python-client==$OPENAPI_PYTHON_CLIENT" "schemathesis==$SCHEMATHESIS" \
    "standardwebhooks==$STANDARDWEBHOOKS"
printf 'post_hooks: []\n' >"$work/python-client.yml"
"$venv/bin/openapi-python-client" generate --path "$work/openapi.json" --meta none \
    --output-path "$work/python/tokenvisor_client" --config "$work/python-client.yml" >/dev/null
run_step "python client smoke" env CLIENT_DIR="$work/python" "$venv/bin/python" clients/python/smoke.py

# TypeScript: types generated from the served document, openapi-fetch, run with tsx.
(cd clients/typescript && npm ci --silent --no-audit --no-fund >/dev/null)
clients/typescript/node_modules/.bin/openapi-typescript "$work/openapi.json" \
    -o clients/typescript/generated/schema.d.ts >/dev/null 2>&1
run_step "typescript client tsc" clients/typescript/node_modules/.bin/tsc -p clients/typescript --noEmit
run_step "typescript client smoke" clients/typescript/node_modules/.bin/tsx clients/typescript/smoke.ts

# Schema fuzzing of the admin API: no server error, every answer as the document says.
run_step "schemathesis" "$venv/bin/schemathesis" run "$work/openapi.json" \
    --url "$TOKENVISOR_URL" -H "Authorization: Bearer $TOKENVISOR_ADMIN_TOKEN" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --max-examples "$SCHEMATHESIS_EXAMPLES" --exclude-path /v1/events --exclude-path /v1/cluster/forward \
    --no-color --report-dir "$work/schemathesis" --seed 1

if [[ $failed -ne 0 ]] && grep -qiE " (ERROR|WARN) " "$work/tokenvisor.log"; then
    echo "tokenvisor logged warnings or errors:"
    grep -E ' (ERROR|WARN) ' "$work/tokenvisor.log" | tail -n 20
fi
echo "clients: $passed passed, $failed failed${failures[*]:+ (${failures[*]})}"
[[ $failed -eq 0 ]]

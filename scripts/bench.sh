#!/usr/bin/env bash
# Runs tokenvisor's benchmarks at the issue's sizes and writes BENCHMARKS.md.
# Needs PostgreSQL at 127.0.0.1:5432 (or TOKENVISOR_TEST_POSTGRES_URL) and pgbench.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p tokenvisor-bench -- --full "$@" --write BENCHMARKS.md

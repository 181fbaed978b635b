# Sourced by clients/run.sh and ui-tests/run.sh (not run on its own).
#
# start_tokenvisor LABEL: starts the built `tokenvisor serve` ($binary) on SQLite in
# $work/data with a random admin token and a free admin port, adds its pid to `pids`
# (the caller's cleanup kills them), waits for the admin API (the port is read from the
# log, $work/tokenvisor.log) and exports TOKENVISOR_URL and TOKENVISOR_ADMIN_TOKEN. On
# failure it prints the log prefixed with LABEL and exits 1.
start_tokenvisor() {
    local label=$1
    local admin_token
    admin_token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
    mkdir "$work/data"
    (
        cd "$work/data"
        for name in $(env | sed -n 's/^\(TOKENVISOR_[A-Z_]*\)=.*/\1/p'); do unset "$name"; done
        export RUST_LOG=info NO_COLOR=1 TOKENVISOR_ADMIN_ADDR=127.0.0.1:0 \
            TOKENVISOR_ADMIN_TOKEN=$admin_token TOKENVISOR_ALLOW_INSECURE_ENDPOINTS=127.0.0.1
        exec "$binary" serve
    ) 2>"$work/tokenvisor.log" &
    pids+=($!)
    local addr=
    for _ in $(seq 1 300); do
        addr=$(sed -n 's/.*admin API listening addr=\([^ ]*\).*/\1/p' "$work/tokenvisor.log" | head -n1)
        [[ -n $addr ]] && break
        sleep 0.1
    done
    if [[ -z $addr ]]; then
        echo "$label: tokenvisor did not start:" >&2
        cat "$work/tokenvisor.log" >&2
        exit 1
    fi
    export TOKENVISOR_URL=http://$addr TOKENVISOR_ADMIN_TOKEN=$admin_token
    echo "tokenvisor at $TOKENVISOR_URL"
}

#!/usr/bin/env bash
# nginx's cost, measured: `forkpool-loadtest --scenarios dispatch` (closed loop, 64 kept-alive
# connections, /isprime?number=7 then /testrequest) against one replica directly, then through
# nginx (deploy/nginx/forkpool.conf, ports filled in) to that one replica, then to two.
#
#   cargo dist && deploy/nginx/bench.sh [RUNS]
#
# Everything listens on 127.0.0.1 and is stopped on exit. nginx runs as the current user with
# its files in a temp dir, `worker_processes auto` as in Debian's own nginx.conf. Each replica
# gets --workers 1, so that one or two replicas use the same cores the load generator and
# nginx share: on a small machine the figures show nginx's cost, not what more machines buy.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-1}
# `cargo dist` (.cargo/config.toml) builds both the server and the load tester, statically
# linked, into target/<host triple>/release/.
host=$(rustc -vV | sed -n 's/^host: //p')
bin=target/$host/release/forkpool
loadtest=target/$host/release/forkpool-loadtest
for program in "$bin" "$loadtest"; do
    [ -x "$program" ] || { echo "no $program: build first with cargo dist" >&2; exit 1; }
done
command -v nginx >/dev/null || { echo "nginx is not installed" >&2; exit 1; }

dir=$(mktemp -d)
pids=()
cleanup() {
    [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

# A free loopback port (the kernel picks one; a race with other programs is unlikely).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_replica() {
    "$bin" --listen "127.0.0.1:$1" --workers 1 2>"$dir/replica-$1.log" >/dev/null &
    pids+=($!)
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return
        sleep 0.1
    done
    echo "replica on port $1 did not get ready" >&2
    exit 1
}

# nginx in front of the given replica ports: the shipped file, its two `server` lines
# replaced by one line per port, its listener by ours.
start_nginx() {
    local listen=$1
    shift
    [ -f "$dir/nginx.pid" ] && { kill -QUIT "$(cat "$dir/nginx.pid")"; sleep 1; }
    local servers=""
    for port in "$@"; do servers+="    server 127.0.0.1:$port max_fails=1 fail_timeout=2s;\n"; done
    sed -e "/server 127.0.0.1:3637 /d" \
        -e "s|    server 127.0.0.1:3636 .*|$servers|" \
        -e "s|listen 80;|listen 127.0.0.1:$listen;|" -e "/listen \[::\]:80;/d" \
        deploy/nginx/forkpool.conf >"$dir/forkpool.conf"
    local user=""
    [ "$(id -u)" = 0 ] && user="user root;"
    cat >"$dir/nginx.conf" <<EOF
$user
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
    include $dir/forkpool.conf;
}
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    for _ in $(seq 50); do
        curl -sf "http://127.0.0.1:$listen/testrequest" >/dev/null && return
        sleep 0.1
    done
    echo "nginx did not answer" >&2
    cat "$dir/error.log" >&2
    exit 1
}

dispatch() {
    echo "== $1"
    "$loadtest" --url "$2" --scenarios dispatch | sed -n '/^dispatch/,/ratio/p'
}

a=$(free_port)
b=$(free_port)
n1=$(free_port)
n2=$(free_port)
start_replica "$a"
start_replica "$b"
for run in $(seq "$runs"); do
    echo "### run $run of $runs"
    dispatch "direct to one replica" "http://127.0.0.1:$a"
    start_nginx "$n1" "$a"
    dispatch "through nginx, one replica" "http://127.0.0.1:$n1"
    start_nginx "$n2" "$a" "$b"
    dispatch "through nginx, two replicas" "http://127.0.0.1:$n2"
done

# What nginx itself logged as errors (a replica that failed a connect or a read), by message.
echo "== nginx errors over all runs"
grep -E '\[(error|crit|alert|emerg)\]' "$dir/error.log" | sed -E 's/^.*\] [0-9#]+: (\*[0-9]+ )?//; s/, client:.*//' | sort | uniq -c || echo "none"

#!/bin/bash
# Paired A/B of two sidecar builds, for deciding a performance change on a noisy machine
# (single `make bench` runs vary by 15-25% here): both sidecar pairs (client -> A -> B ->
# one nginx backend, GOMAXPROCS=1 each) run side by side and are loaded in turn with wrk
# -t2 -c64 for DUR seconds per round; CPU per request of A and B is read from /proc. With
# NGINX=1 an nginx pair (plain) is measured in the same rounds. Medians are printed.
#
#   bench/ab/pairs.sh OLD_BIN_DIR NEW_BIN_DIR [rounds (5)] [tls true|false (false)]
#
# Each BIN_DIR holds a built `sidecar` (NEW_BIN_DIR also `registry`), e.g. from
# `go build -o DIR/ ./cmd/sidecar ./cmd/registry` at the two commits. Loopback only; wrap
# it in `flock /tmp/podmesh-bench.lock` when others measure on the same machine.
# Not a section of `make bench` (it compares builds, not Podmesh with a baseline).
set -u
[ $# -ge 2 ] || { sed -n 2,12p "$0"; exit 2; }
OLD=$1; NEW=$2; R=${3:-5}; TLS=${4:-false}; D=${DUR:-5}
T=$(mktemp -d "${TMPDIR:-/tmp}/podmesh-ab.XXXXXX")
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
BE=$(port); REG=$(port)
cat > $T/be.conf <<NG
worker_processes 1; pid $T/be.pid; error_log $T/be.err warn; events { worker_connections 4096; }
http { access_log off; server_tokens off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path $T/b1; proxy_temp_path $T/b2; fastcgi_temp_path $T/b3; uwsgi_temp_path $T/b4; scgi_temp_path $T/b5;
  server { listen 127.0.0.1:$BE; location / { default_type text/plain; return 200 "$(printf 'x%.0s' $(seq 1 100))"; } } }
NG
NA=$(port); NB=$(port)
for n in A B; do
  if [ $n = A ]; then L=$NA; UP=$NB; else L=$NB; UP=$BE; fi
cat > $T/ng$n.conf <<NG
worker_processes 1; pid $T/ng$n.pid; error_log $T/ng$n.err warn; events { worker_connections 4096; }
http { access_log off; server_tokens off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path $T/${n}1; proxy_temp_path $T/${n}2; fastcgi_temp_path $T/${n}3; uwsgi_temp_path $T/${n}4; scgi_temp_path $T/${n}5;
  upstream next { server 127.0.0.1:$UP; keepalive 1024; keepalive_requests 1000000; keepalive_timeout 300s; }
  server { listen 127.0.0.1:$L; location / { proxy_pass http://next; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NG
done
NGPIDS=""; for f in be ngA ngB; do nginx -c $T/$f.conf -g 'daemon off;' </dev/null >$T/$f.out 2>&1 & NGPIDS="$NGPIDS $!"; done
mkdir -p $T/reg; $NEW/registry -http 127.0.0.1:$REG -data $T/reg </dev/null > $T/reg.log 2>&1 & REGPID=$!
sleep 1
pids=()
start() { # name bin -> prints A's out port
  local name=$1 bin=$2 bi=$(port) ba=$(port) ai=$(port) aa=$(port) ao=$(port)
  GOMAXPROCS=1 $bin/sidecar -tls=$TLS -service svc-$name -id svc-$name-1 -protocol http -inbound 127.0.0.1:$bi -app 127.0.0.1:$BE -admin 127.0.0.1:$ba -registry http://127.0.0.1:$REG </dev/null > $T/$name-b.log 2>&1 &
  echo $! > $T/$name-b.pid
  GOMAXPROCS=1 $bin/sidecar -tls=$TLS -service client-$name -id client-$name -register=false -inbound 127.0.0.1:$ai -app 127.0.0.1:$BE -upstream svc-$name=127.0.0.1:$ao -admin 127.0.0.1:$aa -registry http://127.0.0.1:$REG </dev/null > $T/$name-a.log 2>&1 &
  echo $! > $T/$name-a.pid
  echo $ao > $T/$name.port
}
start old $OLD; start new $NEW
for i in $(seq 1 100); do
  ok=1; for n in old new; do curl -sf -o /dev/null http://127.0.0.1:$(cat $T/$n.port)/ || ok=0; done
  [ $ok = 1 ] && break; sleep 0.3
done
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
run() { # name port -> req/s and cpu ticks per 1k req for A and B
  local name=$1 p=$2 pa pb a0 b0 out rps a1 b1
  if [ $name = nginx ]; then pa=$(pgrep -P $(cat $T/ngA.pid) | head -1); pb=$(pgrep -P $(cat $T/ngB.pid) | head -1)
  else pa=$(cat $T/$name-a.pid); pb=$(cat $T/$name-b.pid); fi
  a0=$(cpu $pa); b0=$(cpu $pb)
  out=$(wrk -t2 -c64 -d${D}s http://127.0.0.1:$p/ 2>&1)
  a1=$(cpu $pa); b1=$(cpu $pb)
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  req=$(echo "$out" | awk '/requests in/{print $1}')
  echo "$name $rps $(python3 -c "print('%.4f %.4f' % (($a1-$a0)*10/$req, ($b1-$b0)*10/$req))")"
}
# warm up
for n in old new; do wrk -t2 -c64 -d2s http://127.0.0.1:$(cat $T/$n.port)/ >/dev/null; done
wrk -t2 -c64 -d2s http://127.0.0.1:$NA/ >/dev/null
for i in $(seq 1 $R); do
  run old $(cat $T/old.port); run new $(cat $T/new.port)
  [ -n "${NGINX:-}" ] && run nginx $NA
done | tee $T/results
for n in old new nginx; do grep "^$n " $T/results | python3 -c "
import sys,statistics as s
rows=[l.split() for l in sys.stdin]
if rows: print('$n', 'median req/s %.0f' % s.median(float(r[1]) for r in rows), 'cpu ms/req A %.4f B %.4f' % (s.median(float(r[2]) for r in rows), s.median(float(r[3]) for r in rows)), 'n=%d' % len(rows))"; done
for n in old new; do kill $(cat $T/$n-a.pid) $(cat $T/$n-b.pid) 2>/dev/null; done
kill $REGPID $NGPIDS
wait 2>/dev/null
rm -rf "$T"

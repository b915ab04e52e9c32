# Runs inside one lab host's namespaces (the lab passes it to `nsenter ... sh -c`).
# Starts, stops and reports the host's services, as an init system would.
#
#   labhost start SERVICE...   start each service unless it is already running
#   labhost stop SERVICE...    stop each service and wait until it is gone
#   labhost status SERVICE...  print "SERVICE running|stopped" per service
set -eu

PGBIN=/usr/lib/postgresql/15/bin
PGDATA=/var/lib/postgresql/15/main

pidfile() {
  case "$1" in
    sshd) echo /run/sshd.pid ;;
    nginx) echo /run/nginx.pid ;;
    supervisord) echo /run/supervisord.pid ;;
    postgres) echo "$PGDATA/postmaster.pid" ;;
    redis) echo /run/redis/redis-server.pid ;;
    dockerd) echo /run/docker.pid ;;
    *) echo "labhost: unknown service '$1'" >&2; exit 2 ;;
  esac
}

running() {
  f=$(pidfile "$1")
  [ -s "$f" ] || return 1
  pid=$(head -n 1 "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
  [ "$state" != Z ] && [ "$state" != X ]   # a killed daemon left as a zombie is not running
}

start_one() {
  case "$1" in
    sshd)
      mkdir -p /run/sshd && chmod 755 /run/sshd
      /usr/sbin/sshd -f /etc/ssh/sshd_config -E /var/log/sshd.log ;;
    nginx)
      nginx ;;
    supervisord)
      supervisord -c /etc/supervisor/supervisord.conf ;;
    postgres)
      mkdir -p /run/postgresql && chown postgres:postgres /run/postgresql
      runuser -u postgres -- "$PGBIN/pg_ctl" -w -s -D "$PGDATA" \
        -l /var/log/postgresql/postgresql-15-main.log start ;;
    redis)
      mkdir -p /run/redis && chown redis:redis /run/redis
      runuser -u redis -- redis-server /etc/redis/redis.conf ;;
    dockerd)
      # its own daemon (and the containerd it manages) in this host's namespaces;
      # the config keeps data, exec root, socket and pidfile in /var/lib and /run
      setsid dockerd --config-file /var/lib/dockerd/daemon.json >>/var/log/dockerd.log 2>&1 &
      i=0
      until docker version >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -ge 600 ]; then echo "dockerd does not answer (see /var/log/dockerd.log)"; return 1; fi
        sleep 0.05
      done ;;
  esac
}

wait_for() {  # wait_for running|stopped SERVICE
  i=0
  while [ $i -lt 100 ]; do
    if [ "$1" = running ] && running "$2"; then return 0; fi
    if [ "$1" = stopped ] && ! running "$2"; then return 0; fi
    sleep 0.05; i=$((i + 1))
  done
  echo "labhost: $2 did not become $1 within 5 s" >&2
  return 1
}

stop_one() {
  running "$1" || return 0
  if [ "$1" = postgres ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -w -s -D "$PGDATA" -m fast stop
  elif [ "$1" = dockerd ]; then
    kill "$(head -n 1 /run/docker.pid)"
    i=0  # dockerd stops its containers first
    while running dockerd && [ $i -lt 400 ]; do sleep 0.05; i=$((i + 1)); done
  else
    kill "$(head -n 1 "$(pidfile "$1")")"
  fi
  wait_for stopped "$1"
}

action="$1"; shift
for service in "$@"; do
  case "$action" in
    start)
      if ! running "$service"; then
        if ! start_one "$service" </dev/null >>/var/log/labhost.log 2>&1; then
          echo "labhost: $service failed to start (see /var/log/labhost.log)" >&2
          exit 1
        fi
        wait_for running "$service" || exit 1
      fi ;;
    stop) stop_one "$service" </dev/null >>/var/log/labhost.log 2>&1 || exit 1 ;;
    status) if running "$service"; then echo "$service running"; else echo "$service stopped"; fi ;;
    *) echo "labhost: unknown action '$action'" >&2; exit 2 ;;
  esac
done

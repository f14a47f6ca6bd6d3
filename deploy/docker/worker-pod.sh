#!/usr/bin/env bash
# The worker pod's entrypoint (installed as /usr/local/bin/medcluster-worker-pod in the worker
# image). A worker pod is one pipeline stage holding MEDCLUSTER_TP GPUs; this starts one
# `medcluster worker` per GPU and exits as soon as any of them exits (after stopping the
# others), so the kubelet restarts the whole pod and its workers come back together.
#
#   medcluster-worker-pod [EXTRA WORKER FLAGS...]   start the workers (extra flags go to each)
#   medcluster-worker-pod probe health|ready         exit 0 if every process answers 200
#
# Process i (0 <= i < MEDCLUSTER_TP) runs
#   medcluster worker --nats URL --cluster NAME --id <pod>-gpu<i> --device cuda --ordinal <i>
#     --listen 0.0.0.0:<7000+i> --advertise <host>:<7000+i> --metrics-port <9400+i>
#     [--memory-gb N] [--log-format F] [--log-level L]
# where <host> is <pod>.<service>.<namespace>.svc.<domain> (the StatefulSet's headless Service),
# or MEDCLUSTER_ADVERTISE_HOST when set. Inside the pod the device plugin exposes the pod's GPUs
# as ordinals 0..tp-1.
#
# Environment (the ConfigMap and the downward API set these):
#   MEDCLUSTER_TP                  GPUs, and so worker processes, in this pod (required)
#   MEDCLUSTER_NATS_URL            NATS URL (required)
#   POD_NAME                       the pod's name: worker ids and the advertised host (required)
#   MEDCLUSTER_WORKER_SERVICE, POD_NAMESPACE, MEDCLUSTER_CLUSTER_DOMAIN (default cluster.local)
#                                  the advertised host, unless MEDCLUSTER_ADVERTISE_HOST is set
#   MEDCLUSTER_CLUSTER             cluster name on NATS (default medcluster)
#   MEDCLUSTER_DEVICE              cuda (default) or cpu
#   MEDCLUSTER_WORKER_MEMORY_GB    passed as --memory-gb when set
#   MEDCLUSTER_LOG_FORMAT, MEDCLUSTER_LOG_LEVEL   passed as --log-format, --log-level when set
#   MEDCLUSTER_WORKER_PORT_BASE, MEDCLUSTER_METRICS_PORT_BASE   7000 and 9400 (the manifests'
#                                  container ports assume these)
#   MEDCLUSTER_STOP_TIMEOUT_S      how long the other workers get to stop once one has exited
#                                  (default 20), before SIGKILL
#   MEDCLUSTER_BIN                 the medcluster command (default medcluster, from PATH)
set -uo pipefail

prog=medcluster-worker-pod
tp=${MEDCLUSTER_TP:-}
grpc_base=${MEDCLUSTER_WORKER_PORT_BASE:-7000}
metrics_base=${MEDCLUSTER_METRICS_PORT_BASE:-9400}

say() { echo "$prog: $*" >&2; }
usage_error() {
  say "$*"
  exit 2
}
is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

is_count "$tp" || usage_error "MEDCLUSTER_TP must be a positive integer (the GPUs in this pod), got '$tp'"
is_count "$grpc_base" || usage_error "MEDCLUSTER_WORKER_PORT_BASE must be a port number, got '$grpc_base'"
is_count "$metrics_base" || usage_error "MEDCLUSTER_METRICS_PORT_BASE must be a port number, got '$metrics_base'"

# The status line of GET <path> on 127.0.0.1:<port>, or nothing if no answer came within 3 s.
# Bash's /dev/tcp keeps the probe free of curl and of a Node start per probe.
status_line() {
  local line=''
  {
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
    IFS= read -r -t 3 line <&3
  } 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$1"
  printf '%s' "${line%$'\r'}"
}

probe() {
  local path
  case ${1:-} in
    health) path=/health ;;
    ready) path=/ready ;;
    *) usage_error "usage: $prog probe health|ready" ;;
  esac
  local i port line failed=0
  for ((i = 0; i < tp; i++)); do
    port=$((metrics_base + i))
    line=$(status_line "$port" "$path")
    if [[ ! $line =~ ^HTTP/[0-9.]+\ 200([^0-9]|$) ]]; then
      echo "worker process $i (port $port): GET $path: ${line:-no answer}"
      failed=1
    fi
  done
  if ((failed)); then
    return 1
  fi
  echo "all $tp worker processes answer 200 to GET $path"
}

if [[ ${1:-} == probe ]]; then
  probe "${2:-}"
  exit
fi

[[ -n ${MEDCLUSTER_NATS_URL:-} ]] || usage_error "MEDCLUSTER_NATS_URL is not set (nats://HOST:4222)"
[[ -n ${POD_NAME:-} ]] || usage_error "POD_NAME is not set (the pod's name, from the downward API)"
if [[ -n ${MEDCLUSTER_ADVERTISE_HOST:-} ]]; then
  host=$MEDCLUSTER_ADVERTISE_HOST
elif [[ -n ${MEDCLUSTER_WORKER_SERVICE:-} && -n ${POD_NAMESPACE:-} ]]; then
  host=$POD_NAME.$MEDCLUSTER_WORKER_SERVICE.$POD_NAMESPACE.svc.${MEDCLUSTER_CLUSTER_DOMAIN:-cluster.local}
else
  usage_error "set MEDCLUSTER_WORKER_SERVICE and POD_NAMESPACE (or MEDCLUSTER_ADVERTISE_HOST): the host other pods reach this one at"
fi
bin=${MEDCLUSTER_BIN:-medcluster}
command -v "$bin" >/dev/null || usage_error "'$bin' is not on PATH"
stop_timeout=${MEDCLUSTER_STOP_TIMEOUT_S:-20}
is_count "$stop_timeout" || usage_error "MEDCLUSTER_STOP_TIMEOUT_S must be a positive integer, got '$stop_timeout'"
optional=()
if [[ -n ${MEDCLUSTER_WORKER_MEMORY_GB:-} ]]; then
  optional+=(--memory-gb "$MEDCLUSTER_WORKER_MEMORY_GB")
fi
if [[ -n ${MEDCLUSTER_LOG_FORMAT:-} ]]; then
  optional+=(--log-format "$MEDCLUSTER_LOG_FORMAT")
fi
if [[ -n ${MEDCLUSTER_LOG_LEVEL:-} ]]; then
  optional+=(--log-level "$MEDCLUSTER_LOG_LEVEL")
fi

pids=()
ids=()
stopping=0

# Background jobs of a non-interactive shell ignore SIGINT, so every stop is a SIGTERM.
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
}
on_signal() {
  say "$1: stopping ${#pids[@]} worker(s)"
  stopping=1
  stop_all
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

for ((i = 0; i < tp && !stopping; i++)); do
  id=$POD_NAME-gpu$i
  "$bin" worker \
    --nats "$MEDCLUSTER_NATS_URL" \
    --cluster "${MEDCLUSTER_CLUSTER:-medcluster}" \
    --id "$id" \
    --device "${MEDCLUSTER_DEVICE:-cuda}" \
    --ordinal "$i" \
    --listen "0.0.0.0:$((grpc_base + i))" \
    --advertise "$host:$((grpc_base + i))" \
    --metrics-port "$((metrics_base + i))" \
    "${optional[@]}" "$@" &
  pids+=("$!")
  ids+=("$id")
done
say "started ${ids[*]} (advertised at $host)"

id_of() {
  local k
  for k in "${!pids[@]}"; do
    if [[ ${pids[$k]} == "$1" ]]; then
      echo "${ids[$k]}"
      return
    fi
  done
  echo "pid $1"
}

# Wait for the first worker to exit (or for a signal, which interrupts `wait`).
first_status=0
while ((!stopping)); do
  exited=''
  wait -n -p exited "${pids[@]}"
  status=$?
  if [[ -z ${exited:-} ]]; then
    continue # a trapped signal interrupted the wait: the loop ends if it was a stop
  fi
  say "$(id_of "$exited") exited with status $status; stopping the others so the pod restarts"
  # A worker is not meant to end on its own: even a clean exit means the pod must restart.
  first_status=$((status == 0 ? 1 : status))
  stopping=1
  stop_all
  # `jobs -rp` lists the workers still running (an exited one is no longer a running job).
  for ((t = 0; t < stop_timeout * 10; t++)); do
    [[ -z $(jobs -rp) ]] && break
    sleep 0.1
  done
  for pid in $(jobs -rp); do
    say "$(id_of "$pid") did not stop within ${stop_timeout}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
  done
done

# Every worker has been told to stop: let each leave the cluster (the kubelet's grace period bounds this).
for pid in "${pids[@]}"; do
  wait "$pid"
  status=$?
  if ((first_status == 0 && status != 0 && status != 143)); then
    first_status=$status
  fi
done
exit "$first_status"

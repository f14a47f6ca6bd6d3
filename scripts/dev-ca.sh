#!/usr/bin/env bash
# A development CA and certificates for medcluster's TLS, made with openssl. For a laptop, a test
# cluster or CI: in production use your organisation's CA (or cert-manager) instead.
#
#   scripts/dev-ca.sh DIR [--days N] [--name NAME]...
#
# Writes into DIR (created if missing):
#   ca.crt, ca.key          the CA. An existing DIR/ca.key is reused, so certificates made later
#                           (new names, a renewal) are issued by the same CA.
#   node.crt, node.key      internal mutual TLS, for the coordinator and every worker
#                           (--internal-ca ca.crt --internal-cert node.crt --internal-key node.key),
#                           and for nats-server, so that NATS is trusted through the same CA
#                           (tls { cert_file: node.crt, key_file: node.key, ca_file: ca.crt,
#                           verify: true }); good as a TLS server and as a TLS client
#   server.crt, server.key  the public ports (--tls-cert server.crt --tls-key server.key); clients
#                           trust ca.crt (`medcluster generate --tls-ca ca.crt`, curl --cacert ca.crt)
# Both certificates name localhost, 127.0.0.1, ::1, this host's name and every --name: a DNS name
# (a wildcard such as '*.medcluster-worker.medcluster.svc.cluster.local' covers a StatefulSet's
# pods; NATS's Service is reached as 'nats') or an IP address. They are valid for --days days (default 825), and so is a CA made now
# (default 3650).
# Private keys are EC P-256, unencrypted, readable by their owner only.
set -euo pipefail

prog=dev-ca.sh
usage() {
  echo "usage: scripts/$prog DIR [--days N] [--name NAME]..." >&2
  exit 2
}

[[ $# -ge 1 && $1 != -* ]] || usage
dir=$1
shift
days=825
ca_days=3650
names=(localhost "$(hostname)")
ips=(127.0.0.1 ::1)
while [[ $# -gt 0 ]]; do
  case $1 in
    --days)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || {
        echo "$prog: --days needs a positive number of days" >&2
        exit 2
      }
      days=$2
      ca_days=$2
      shift 2
      ;;
    --name)
      [[ -n ${2:-} ]] || usage
      if [[ $2 =~ ^[0-9.]+$ || $2 == *:* ]]; then ips+=("$2"); else names+=("$2"); fi
      shift 2
      ;;
    *) usage ;;
  esac
done
command -v openssl >/dev/null || {
  echo "$prog: openssl is not installed (Debian: apt-get install -y openssl)" >&2
  exit 1
}

mkdir -p "$dir"
cd "$dir"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [[ ! -f ca.key ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -keyout ca.key -out ca.crt -days "$ca_days" -subj "/O=medcluster development/CN=medcluster dev CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  echo "$prog: made a CA in $dir/ca.crt" >&2
fi

san=''
for n in "${names[@]}"; do san+="DNS:$n,"; done
for ip in "${ips[@]}"; do san+="IP:$ip,"; done
san=${san%,}

# issue NAME COMMON_NAME EXTENDED_KEY_USAGE
issue() {
  cat >"$tmp/$1.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = $3
subjectAltName = $san
EOF
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -keyout "$1.key" -out "$tmp/$1.csr" -subj "/O=medcluster development/CN=$2" 2>/dev/null
  openssl x509 -req -in "$tmp/$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
    -days "$days" -extfile "$tmp/$1.ext" -out "$1.crt" 2>/dev/null
  chmod 644 "$1.crt"
}
issue node 'medcluster node' serverAuth,clientAuth
issue server 'medcluster' serverAuth
chmod 644 ca.crt
rm -f ca.srl
echo "$prog: issued node.crt and server.crt for $san, valid $days days" >&2

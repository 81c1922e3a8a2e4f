#!/usr/bin/env sh
# Make a private CA and a certificate for the broker, for the TLS listener (8883) in
# mosquitto.conf. Devices and the ingestor trust ca.crt (ENVMON_MQTT_CA_FILE). For a broker
# on the internet, a certificate from a public CA works as well: put it in certs/ as
# server.crt / server.key and its chain as ca.crt.
#   sh deploy/mosquitto/make-certs.sh [OUT_DIR] [HOSTNAME ...]
set -eu
out=${1:-"$(dirname "$0")/certs"}
[ $# -gt 0 ] && shift
names=${*:-"mosquitto localhost"}
mkdir -p "$out"
san=""
for n in $names; do san="${san:+$san,}DNS:$n"; done
san="$san,IP:127.0.0.1"
# The CA's private key stays out of certs/ (which the broker mounts): keep it offline.
cadir=${CA_DIR:-"$out/../ca-private"}
mkdir -p "$cadir"
openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=envmon MQTT CA" \
  -keyout "$cadir/ca.key" -out "$out/ca.crt" 2>/dev/null
openssl req -newkey rsa:3072 -nodes -subj "/CN=${names%% *}" \
  -keyout "$out/server.key" -out "$out/server.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > "$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$cadir/ca.key" \
  -CAcreateserial -CAserial "$cadir/ca.srl" -days 825 -extfile "$out/server.ext" -out "$out/server.crt" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext"
chmod 600 "$cadir/ca.key" "$out/server.key"
# The broker reads server.key as its own user: in the eclipse-mosquitto image that is uid
# 1883, so run: sudo chown 1883:1883 certs/server.key
echo "wrote $out/ca.crt, $out/server.crt, $out/server.key (SAN $san)"

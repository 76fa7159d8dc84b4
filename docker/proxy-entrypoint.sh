#!/bin/sh
# The TLS proxy's start: the certificate in /etc/radtriage/tls (cert.pem + key.pem: yours, or a
# self-signed one made here on first start for the ALLOWED_HOSTS names), then nginx.
set -eu
TLS=/etc/radtriage/tls
if [ ! -s "$TLS/cert.pem" ] || [ ! -s "$TLS/key.pem" ]; then
  names="" cn=""
  for host in $(printf '%s' "${ALLOWED_HOSTS:-localhost}" | tr ',' ' '); do
    case $host in
      '*') continue ;;
      .*) host="*$host" ;;  # Django's ".example.org": the domain and its subdomains
    esac
    host=${host#[}; host=${host%]}  # "[::1]" -> "::1"
    case $host in
      *:*|*[0-9].[0-9]*.[0-9]*.[0-9]) names="$names,IP:$host" ;;
      *) names="$names,DNS:$host" ;;
    esac
    [ -n "$cn" ] || cn=$host
  done
  [ -n "$names" ] || { names=",DNS:localhost"; cn=localhost; }
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -sha256 -subj "/CN=$cn" \
    -addext "subjectAltName=${names#,}" -keyout "$TLS/key.pem.tmp" -out "$TLS/cert.pem.tmp" 2>/dev/null
  chmod 600 "$TLS/key.pem.tmp"
  mv "$TLS/key.pem.tmp" "$TLS/key.pem" && mv "$TLS/cert.pem.tmp" "$TLS/cert.pem"
  echo "proxy: no certificate in $TLS, made a self-signed one for ${names#,} (browsers warn;" \
    "put your own cert.pem and key.pem in RADTRIAGE_TLS_DIR)"
fi
# HTTP is redirected to the published HTTPS port ("127.0.0.1:8443" -> ":8443"; 443 -> none).
port=${RADTRIAGE_HTTPS_PORT:-443}
port=${port##*:}
suffix=""
[ "$port" = 443 ] || suffix=":$port"
sed "s|__HTTPS_PORT__|$suffix|g" /etc/nginx/radtriage.conf.template > /etc/nginx/nginx.conf
exec "$@"

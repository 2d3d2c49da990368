#!/usr/bin/env bash
# Mints an RS256 JWT for the standalone example, signed with the DEV-ONLY key in this
# directory: mint-token.sh [SUBJECT] [GROUP] [SECONDS_VALID]
# Only openssl, base64 and tr are needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sub=${1:-alice}
group=${2:-dev}
ttl=${3:-3600}
now=$(date +%s)
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"dev-1"}' | b64url)
payload=$(printf '{"iss":"https://dev-issuer.localhost","aud":"rustronaut-demo","sub":"%s","email":"%s@example.localhost","groups":["%s"],"iat":%d,"nbf":%d,"exp":%d}' \
  "$sub" "$sub" "$group" "$now" "$now" "$((now + ttl))" | b64url)
sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$here/dev-jwt-signing-key.pem" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$sig"

#!/usr/bin/env bash
# The console part of `make demo` (docs/console.md): adds the web console to the installed
# release, as a pod from its own image, signs a person in through a real OpenID provider, and
# prints the URL and the login to use in a browser.
#
#   e2e/scripts/console-demo.sh DIR
#
# Needs what `cluster.sh up` exports (KUBECONFIG, PATH with the Go-built tools: kubectl, helm,
# oidc-provider) and the chart installed as release `rustronaut` in rustronaut-system. What it
# starts on the host is recorded in DIR/demo.pids; `make cluster-down` stops it.
#
#   browser ── http://localhost:PORT ── kubectl port-forward ── Service rustronaut-console ── pod
#      └────── https://172.30.0.1:OP_PORT (the OP, on the node's address) ──────────────────┘
#
# Why localhost and a port-forward: the console's session cookie is `__Host-` and Secure, which
# browsers (and curl) keep only over https or on localhost; this demo has no certificate for a
# public name. The OP listens on the node's address so both the console pod and a browser on
# this machine reach it under one issuer URL; its certificate comes from a CA made here
# (DIR/console/ca.crt, trusted by the console through the chart's console.oidc.caConfigMap;
# a browser warns about it once). e2e/tests/end_to_end/console.rs runs this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=$(realpath -m "${1:?usage: $0 DIR}")
node_ip=172.30.0.1
op_port=${CONSOLE_DEMO_OP_PORT:-5556}
port=${CONSOLE_DEMO_PORT:-8090}
issuer="https://$node_ip:$op_port"
public="http://localhost:$port"
ns=rustronaut-system
work="$dir/console"
mkdir -p "$work"

# What an earlier run left (a second `make demo` on the same cluster).
if [ -f "$dir/demo.pids" ]; then
	while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$dir/demo.pids"
	rm -f "$dir/demo.pids"
fi

if [ ! -f "$work/op.crt" ]; then
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
		-subj "/CN=rustronaut demo CA" -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$node_ip" \
		-keyout "$work/op.key" -out "$work/op.csr" 2>/dev/null
	printf 'subjectAltName=IP:%s,DNS:localhost\nextendedKeyUsage=serverAuth\n' "$node_ip" >"$work/op.ext"
	openssl x509 -req -in "$work/op.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
		-days 30 -extfile "$work/op.ext" -out "$work/op.crt" 2>/dev/null
fi
[ -f "$work/client-secret" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$work/client-secret"
[ -f "$work/cookie-key" ] || head -c 32 /dev/urandom | base64 >"$work/cookie-key"

echo "==> an OpenID provider on the node's address ($issuer; zitadel's example OP)"
OIDC_LISTEN="$node_ip:$op_port" OIDC_ISSUER="$issuer" \
	OIDC_TLS_CERT="$work/op.crt" OIDC_TLS_KEY="$work/op.key" \
	OIDC_CLIENT_ID=rustronaut-console OIDC_CLIENT_SECRET="$(cat "$work/client-secret")" \
	OIDC_REDIRECT_URIS="$public/oidc/callback" \
	nohup oidc-provider >"$work/op.log" 2>&1 </dev/null &
echo $! >>"$dir/demo.pids"
for _ in $(seq 1 100); do
	curl -sf --cacert "$work/ca.crt" -o /dev/null "$issuer/.well-known/openid-configuration" && break
	sleep 0.1
done
curl -sf --cacert "$work/ca.crt" -o /dev/null "$issuer/.well-known/openid-configuration" ||
	{ echo "the OP did not start; $work/op.log says:" >&2; cat "$work/op.log" >&2; exit 1; }

echo "==> helm upgrade --reuse-values --set console.enabled=true (image localhost/rustronaut/console:dev)"
kubectl -n "$ns" create secret generic rustronaut-console-demo \
	--from-literal=clientSecret="$(cat "$work/client-secret")" \
	--from-literal=cookieKeys="$(cat "$work/cookie-key")" \
	--dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$ns" create configmap rustronaut-console-oidc-ca --from-file=ca.crt="$work/ca.crt" \
	--dry-run=client -o yaml | kubectl apply -f - >/dev/null
# What the demo's person may do: edit the four kinds everywhere (RBAC decides, not the console).
kubectl apply --server-side --field-manager=rustronaut-demo -f e2e/manifests/console-access.yaml >/dev/null
helm upgrade rustronaut charts/rustronaut --namespace "$ns" --reuse-values \
	--set console.enabled=true \
	--set console.image.repository=localhost/rustronaut/console --set console.image.tag=dev \
	--set console.publicURL="$public" \
	--set console.oidc.issuer="$issuer" --set console.oidc.clientID=rustronaut-console \
	--set 'console.oidc.scopes=email\,profile' \
	--set console.oidc.caConfigMap=rustronaut-console-oidc-ca \
	--set console.secretName=rustronaut-console-demo \
	--wait --timeout 3m >/dev/null
kubectl -n "$ns" rollout status deployment/rustronaut-console --timeout=120s >/dev/null
kubectl -n "$ns" get pods -l app.kubernetes.io/name=rustronaut-console -o wide

nohup kubectl -n "$ns" port-forward --address 127.0.0.1 service/rustronaut-console "$port:80" \
	>"$work/port-forward.log" 2>&1 </dev/null &
echo $! >>"$dir/demo.pids"
for _ in $(seq 1 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$public/readyz")" = 200 ] && break
	sleep 0.2
done

# The login a browser does, with curl: the console sends us to the OP, we fill in its form,
# the OP sends us back with a code, the console sets its session cookie.
user="test-user@$node_ip" password=verysecure
jar="$work/cookies"
rm -f "$jar"
get() { # URL [curl args...]: prints "<status> <absolute redirect URL>"
	local url=$1
	shift
	curl -s -o /dev/null -c "$jar" -b "$jar" --cacert "$work/ca.crt" --max-time 10 \
		-w '%{http_code} %{redirect_url}' "$@" "$url"
}
step=$(get "$public/login?return_to=%2F")
authorize=${step#* }
step=$(get "$authorize")
form=${step#* }
id=$(sed -n 's/.*authRequestID=\([^&]*\).*/\1/p' <<<"$form")
step=$(get "$issuer/login/username" --data-urlencode "id=$id" \
	--data-urlencode "username=$user" --data-urlencode "password=$password")
next=${step#* }
for _ in 1 2 3 4 5; do
	case "$next" in "$public"/oidc/callback*) break ;; esac
	step=$(get "$next")
	next=${step#* }
done
step=$(get "$next")
page=$(curl -s -c "$jar" -b "$jar" --max-time 10 "$public/")
gateways=$(curl -s -c "$jar" -b "$jar" --max-time 10 "$public/k/gateways")
who=$(grep -o 'test-user@zitadel.ch' <<<"$page" | head -1 || true)
listed=$(grep -o 'hello-gw' <<<"$gateways" | head -1 || true)
echo
if [ -n "$who" ] && [ -n "$listed" ]; then
	echo "==> signed in with curl as $user: the console lists the demo's Gateway hello-gw to $who"
else
	echo "==> the scripted login did not reach the overview (last step: $step); $work/ has the logs" >&2
	kubectl -n "$ns" logs deployment/rustronaut-console --tail=20 >&2 || true
	exit 1
fi
cat <<EOF

The console: $public  (kubectl port-forward from this machine)
  log in as $user / $password  (shown to the cluster as test-user@zitadel.ch)
  the OP's certificate is from a CA made for this demo: $work/ca.crt
EOF

// Command oidc-provider is a real OpenID Connect provider for the gateway's browser-login
// tests: zitadel/oidc's example OP (an OpenID-certified library, in-memory storage, a
// username/password login page) served over HTTPS with an https issuer, because the gateway
// accepts only https issuers. Everything comes from the environment:
//
//	OIDC_LISTEN        address to listen on (default 127.0.0.1:9998)
//	OIDC_ISSUER        issuer URL (default https://localhost:9998/)
//	OIDC_TLS_CERT      PEM certificate chain for the listener (required)
//	OIDC_TLS_KEY       PEM private key (required)
//	OIDC_CLIENT_ID     confidential web client id (default rustronaut)
//	OIDC_CLIENT_SECRET its secret (default secret)
//	OIDC_REDIRECT_URIS comma-separated redirect URIs the client may use (required)
//	OIDC_USERS_FILE    optional JSON users file (zitadel's example format); default: its
//	                   built-in users test-user@localhost / verysecure and test-user2@localhost
//
// Development and test use only: the token encryption key is the example's fixed one.
package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
)

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

func main() {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	listen := env("OIDC_LISTEN", "127.0.0.1:9998")
	issuer := env("OIDC_ISSUER", "https://localhost:9998/")
	cert, key := os.Getenv("OIDC_TLS_CERT"), os.Getenv("OIDC_TLS_KEY")
	redirects := strings.Split(os.Getenv("OIDC_REDIRECT_URIS"), ",")
	if cert == "" || key == "" || redirects[0] == "" {
		fmt.Fprintln(os.Stderr, "oidc-provider: OIDC_TLS_CERT, OIDC_TLS_KEY and OIDC_REDIRECT_URIS are required")
		os.Exit(2)
	}
	u, err := url.Parse(issuer)
	if err != nil || u.Scheme != "https" {
		fmt.Fprintf(os.Stderr, "oidc-provider: OIDC_ISSUER must be an https URL, got %q\n", issuer)
		os.Exit(2)
	}
	storage.RegisterClients(storage.WebClient(env("OIDC_CLIENT_ID", "rustronaut"), env("OIDC_CLIENT_SECRET", "secret"), redirects...))

	var users storage.UserStore
	if f := os.Getenv("OIDC_USERS_FILE"); f != "" {
		users, err = storage.StoreFromFile(f)
		if err != nil {
			fmt.Fprintf(os.Stderr, "oidc-provider: users file %s: %v\n", f, err)
			os.Exit(2)
		}
	} else {
		users = storage.NewUserStore(issuer)
	}
	router := exampleop.SetupServer(issuer, storage.NewStorage(users), logger, false)
	server := &http.Server{
		Addr:      listen,
		Handler:   router,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12},
	}
	logger.Info("oidc-provider listening", "addr", listen, "issuer", issuer)
	if err := server.ListenAndServeTLS(cert, key); err != nil && err != http.ErrServerClosed {
		fmt.Fprintf(os.Stderr, "oidc-provider: %v\n", err)
		os.Exit(1)
	}
}

//go:build tools

// Keeps promtool's packages in this module's go.sum, so `go build
// github.com/prometheus/prometheus/cmd/promtool` from this directory resolves.
package main

import _ "github.com/prometheus/prometheus/cmd/promtool"

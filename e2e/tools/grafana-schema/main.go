// grafana-schema decodes Grafana dashboard JSON files (paths as arguments) strictly with the
// schema types of Grafana's own Foundation SDK (github.com/grafana/grafana-foundation-sdk):
// an unknown field, a field of the wrong type, a missing required field, or panel options and
// field config that do not match the panel plugin's schema are errors. It prints one JSON
// line per file: the file and its errors (none when the dashboard matches the schema).
//
// Why this and not Grafana's dashboard-linter: the Go module proxy does not serve
// github.com/grafana/dashboard-linter (no version listed, v0.1.1 refused), so the linter's
// best-practice rules are checked by e2e/tests/observability.rs itself, and this program adds
// what the linter does not: the dashboard against Grafana's schema.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

type result struct {
	File   string   `json:"file"`
	Errors []string `json:"errors"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: grafana-schema DASHBOARD.json...")
		os.Exit(2)
	}
	// Panel and data query plugins' schemas (timeseries, stat, prometheus, ...), so options,
	// fieldConfig and targets are checked against the plugin they name.
	plugins.RegisterDefaultPlugins()
	out := json.NewEncoder(os.Stdout)
	for _, path := range os.Args[1:] {
		r := result{File: path, Errors: []string{}}
		raw, err := os.ReadFile(path)
		if err != nil {
			r.Errors = append(r.Errors, err.Error())
		} else {
			var d dashboard.Dashboard
			if err := d.UnmarshalJSONStrict(raw); err != nil {
				// The SDK joins its errors with newlines (and may return an empty list as
				// an error value): one entry per non-empty line.
				for _, line := range strings.Split(err.Error(), "\n") {
					if strings.TrimSpace(line) != "" {
						r.Errors = append(r.Errors, line)
					}
				}
			}
		}
		if err := out.Encode(r); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

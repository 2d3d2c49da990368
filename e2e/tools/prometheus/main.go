// promql-check reads Grafana dashboard JSON files (paths as arguments) and parses every panel
// target's `expr` with the real PromQL parser of Prometheus (the version promtool is built
// from), after replacing Grafana's variables with values of the right type. It prints one JSON
// line per expression: the dashboard, the panel title, the expression, the metric names it
// selects and the parse error, if any. With `-exprs` it reads a JSON array of
// {"name": ..., "expr": ...} on stdin instead (alert rules) and reports them alike. The project's tests (e2e/tests/observability.rs) decide
// what is acceptable; this program only reports what the parser says.
//
// The same module also pins github.com/prometheus/prometheus for `promtool` (built from
// ./cmd/promtool of that module by e2e/scripts/tools.sh), so both read PromQL alike.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

type result struct {
	Dashboard string   `json:"dashboard"`
	Panel     string   `json:"panel"`
	Expr      string   `json:"expr"`
	Metrics   []string `json:"metrics"`
	Error     string   `json:"error,omitempty"`
}

// Grafana's built-in interval variables become durations; every other `$var` or `${var}`
// (dashboard template variables, used as label values) becomes a plain string.
var (
	intervalVars = regexp.MustCompile(`\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}`)
	otherVars    = regexp.MustCompile(`\$\{[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}|\$[A-Za-z_][A-Za-z0-9_]*`)
)

func substitute(expr string) string {
	expr = intervalVars.ReplaceAllString(expr, "5m")
	return otherVars.ReplaceAllString(expr, "var")
}

type panel struct {
	Title   string            `json:"title"`
	Targets []json.RawMessage `json:"targets"`
	Panels  []panel           `json:"panels"`
}

func walk(dash string, ps []panel, out *[]result) {
	for _, p := range ps {
		for _, raw := range p.Targets {
			var t struct {
				Expr string `json:"expr"`
			}
			if err := json.Unmarshal(raw, &t); err != nil || t.Expr == "" {
				*out = append(*out, result{Dashboard: dash, Panel: p.Title, Error: "target without expr"})
				continue
			}
			*out = append(*out, check(dash, p.Title, t.Expr))
		}
		walk(dash, p.Panels, out)
	}
}

func check(dash, title, expr string) result {
	r := result{Dashboard: dash, Panel: title, Expr: expr, Metrics: []string{}}
	// Default options: the functions and syntax a stock Prometheus accepts (no experimental ones).
	e, err := parser.NewParser(parser.Options{}).ParseExpr(substitute(expr))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	seen := map[string]bool{}
	for _, sel := range parser.ExtractSelectors(e) {
		for _, m := range sel {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				seen[m.Value] = true
			}
		}
	}
	for m := range seen {
		r.Metrics = append(r.Metrics, m)
	}
	sort.Strings(r.Metrics)
	return r
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: promql-check <dashboard.json>...")
		os.Exit(2)
	}
	var out []result
	if os.Args[1] == "-exprs" {
		var exprs []struct {
			Name string `json:"name"`
			Expr string `json:"expr"`
		}
		if err := json.NewDecoder(os.Stdin).Decode(&exprs); err != nil {
			fmt.Fprintf(os.Stderr, "stdin: %v\n", err)
			os.Exit(1)
		}
		for _, e := range exprs {
			out = append(out, check("-", e.Name, e.Expr))
		}
	}
	for _, path := range os.Args[1:] {
		if path == "-exprs" {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		var d struct {
			Title  string  `json:"title"`
			Panels []panel `json:"panels"`
		}
		if err := json.Unmarshal(data, &d); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			os.Exit(1)
		}
		name := d.Title
		if name == "" {
			name = path
		}
		walk(strings.TrimSpace(name), d.Panels, &out)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, r := range out {
		_ = enc.Encode(r)
	}
}

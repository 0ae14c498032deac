// Package deploy holds what installs and watches clusterpeer, beside the
// code that reads it for the tests: the systemd units (systemd/), the
// Debian package's definition (nfpm.yaml), the Grafana dashboard
// (grafana/) and the Prometheus alerting rules and their unit tests
// (prometheus/). docs/operations.md says how they fit together.
//
// What flows through it: the metric names the dashboard's queries and
// the rules' expressions use, which the end-to-end tests check against
// live scrapes of a demux and a gateway.
package deploy

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"

	"gopkg.in/yaml.v3"
)

//go:embed grafana/clusterpeer.json
var Dashboard []byte

//go:embed prometheus/clusterpeer-alerts.yaml
var AlertRules []byte

// DashboardQueries are the PromQL expressions of the dashboard's panels
// and template variables, by panel title.
func DashboardQueries(dashboard []byte) (map[string][]string, error) {
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(dashboard, &d); err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	out := map[string][]string{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			return nil, fmt.Errorf("dashboard: panel %q has no query", p.Title)
		}
		for _, t := range p.Targets {
			if t.Expr == "" {
				return nil, fmt.Errorf("dashboard: panel %q has an empty query", p.Title)
			}
			out[p.Title] = append(out[p.Title], t.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(string); ok && v.Type == "query" {
			out["variable "+v.Name] = append(out["variable "+v.Name], q)
		}
	}
	return out, nil
}

// RuleQueries are the alerting rules' expressions, by alert name.
func RuleQueries(rules []byte) (map[string]string, error) {
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(rules, &f); err != nil {
		return nil, fmt.Errorf("alert rules: %w", err)
	}
	out := map[string]string{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out[r.Alert] = r.Expr
		}
	}
	return out, nil
}

var (
	metricName = regexp.MustCompile(`\bclusterpeer_[a-z0-9_]+\b`)
	nameRegexp = regexp.MustCompile(`__name__=~"([^"]+)"`)
)

// Metrics are the metric names an expression uses: the clusterpeer_*
// names it spells out, and the patterns of its __name__=~ matchers
// (each must match at least one metric).
func Metrics(expr string) (names []string, patterns []*regexp.Regexp, err error) {
	for _, m := range nameRegexp.FindAllStringSubmatch(expr, -1) {
		re, err := regexp.Compile("^(?:" + m[1] + ")$")
		if err != nil {
			return nil, nil, fmt.Errorf("%q: %w", m[1], err)
		}
		patterns = append(patterns, re)
	}
	seen := map[string]bool{}
	for _, n := range metricName.FindAllString(nameRegexp.ReplaceAllString(expr, ""), -1) {
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, patterns, nil
}

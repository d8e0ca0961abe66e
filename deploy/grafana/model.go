// Package grafana builds Podmesh's Grafana dashboards (the JSON under dashboards/) from Go:
// the mesh overview, one service in detail, the launcher and the registry. Every query uses
// the metric names and labels of docs/metrics.md, against the Prometheus datasource that
// provisioning/datasources/prometheus.yml provisions with the uid DatasourceUID.
//
// The dashboards are plain Go structs marshalled to Grafana's dashboard JSON model (schema
// version SchemaVersion), not grafana-foundation-sdk: the subset used here (timeseries and
// stat panels, rows, Prometheus targets, variables, panel and data links) is small, and the
// SDK's v0.0.x API would be a dependency for it. Run `go generate ./deploy/grafana` after a
// change; a test fails when the committed JSON differs from what Dashboards renders.
package grafana

//go:generate go run ./gen -out dashboards

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
)

// DatasourceUID is the uid of the provisioned Prometheus datasource every panel queries.
const DatasourceUID = "podmesh-prometheus"

// SchemaVersion is the Grafana dashboard schema version the JSON follows (Grafana 11).
const SchemaVersion = 39

// Dashboard is a Grafana dashboard in the JSON model's field names.
type Dashboard struct {
	UID           string     `json:"uid"`
	Title         string     `json:"title"`
	Description   string     `json:"description"`
	Tags          []string   `json:"tags"`
	Editable      bool       `json:"editable"`
	GraphTooltip  int        `json:"graphTooltip"` // 1: shared crosshair
	SchemaVersion int        `json:"schemaVersion"`
	Version       int        `json:"version"`
	Refresh       string     `json:"refresh"`
	Time          TimeRange  `json:"time"`
	Timezone      string     `json:"timezone"`
	Templating    Templating `json:"templating"`
	Links         []Link     `json:"links"`
	Panels        []Panel    `json:"panels"`
}

// TimeRange is the default time range.
type TimeRange struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// Templating holds the dashboard's variables.
type Templating struct {
	List []Variable `json:"list"`
}

// Variable is a dashboard variable: a textbox (Query is its default) or a Prometheus query
// variable (Query is a label_values(...) query).
type Variable struct {
	Name        string         `json:"name"`
	Label       string         `json:"label"`
	Type        string         `json:"type"` // textbox, query
	Description string         `json:"description,omitempty"`
	Query       string         `json:"query"`
	Definition  string         `json:"definition,omitempty"`
	Datasource  *DatasourceRef `json:"datasource,omitempty"`
	Current     Current        `json:"current"`
	Refresh     int            `json:"refresh,omitempty"` // 2: on time range change
	Sort        int            `json:"sort,omitempty"`    // 1: alphabetical
	Hide        int            `json:"hide"`
	Options     []Current      `json:"options"`
}

// Current is a variable's selected (or offered) value.
type Current struct {
	Text  string `json:"text"`
	Value string `json:"value"`
}

// DatasourceRef names a datasource by type and uid.
type DatasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// Link is a dashboard or panel link (Jaeger searches), or, in FieldConfig, a data link.
type Link struct {
	Title       string `json:"title"`
	URL         string `json:"url"`
	TargetBlank bool   `json:"targetBlank"`
	Type        string `json:"type,omitempty"` // dashboard links: "link"
}

// GridPos places a panel on the 24-column grid.
type GridPos struct {
	H int `json:"h"`
	W int `json:"w"`
	X int `json:"x"`
	Y int `json:"y"`
}

// Panel is a timeseries, stat or row panel.
type Panel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Description string         `json:"description,omitempty"`
	GridPos     GridPos        `json:"gridPos"`
	Collapsed   *bool          `json:"collapsed,omitempty"` // rows
	Datasource  *DatasourceRef `json:"datasource,omitempty"`
	Targets     []Target       `json:"targets,omitempty"`
	FieldConfig *FieldConfig   `json:"fieldConfig,omitempty"`
	Options     map[string]any `json:"options,omitempty"`
	Links       []Link         `json:"links,omitempty"`
}

// Target is one PromQL query of a panel.
type Target struct {
	RefID        string         `json:"refId"`
	Datasource   *DatasourceRef `json:"datasource"`
	Expr         string         `json:"expr"`
	LegendFormat string         `json:"legendFormat"`
	Range        bool           `json:"range"`
	Instant      bool           `json:"instant"`
}

// FieldConfig sets the unit, the thresholds and the data links of a panel's series.
type FieldConfig struct {
	Defaults  FieldDefaults `json:"defaults"`
	Overrides []any         `json:"overrides"`
}

// FieldDefaults are the field options of every series.
type FieldDefaults struct {
	Unit     string         `json:"unit,omitempty"`
	Min      *float64       `json:"min,omitempty"`
	Decimals *int           `json:"decimals,omitempty"`
	Links    []Link         `json:"links,omitempty"`
	Custom   map[string]any `json:"custom,omitempty"`
}

// Render returns d as indented JSON with a final newline, as committed under dashboards/.
func Render(d Dashboard) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // PromQL's <, > and & stay readable
	enc.SetIndent("", "  ")
	if err := enc.Encode(d); err != nil {
		return nil, fmt.Errorf("grafana: render dashboard %s: %w", d.UID, err)
	}
	return buf.Bytes(), nil
}

// FileName is the file d is committed as under dashboards/.
func FileName(d Dashboard) string { return d.UID + ".json" }

// Expressions returns every PromQL expression of d's panels, with the panel it belongs to.
func Expressions(d Dashboard) []PanelExpr {
	var out []PanelExpr
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			out = append(out, PanelExpr{Dashboard: d.UID, PanelID: p.ID, Panel: p.Title, RefID: t.RefID, Expr: t.Expr})
		}
	}
	return out
}

// PanelExpr is one query of one panel.
type PanelExpr struct {
	Dashboard string
	PanelID   int
	Panel     string
	RefID     string
	Expr      string
}

func (e PanelExpr) String() string {
	return fmt.Sprintf("%s panel %d %q query %s", e.Dashboard, e.PanelID, e.Panel, e.RefID)
}

var varRef = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)(\.[A-Za-z0-9_.]+)?\}?`)

// VariableRefs returns the names of the Grafana variables s refers to ($name, ${name} or
// ${name.field}), in order of appearance.
func VariableRefs(s string) []string {
	var out []string
	for _, m := range varRef.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

// ForPrometheus replaces the Grafana variables of a panel query with what Prometheus accepts:
// $__rate_interval with rateInterval, and $name or ${name} with vars[name].
func ForPrometheus(expr, rateInterval string, vars map[string]string) string {
	return varRef.ReplaceAllStringFunc(expr, func(ref string) string {
		name := varRef.FindStringSubmatch(ref)[1]
		if name == "__rate_interval" {
			return rateInterval
		}
		if v, ok := vars[name]; ok {
			return v
		}
		return ref
	})
}

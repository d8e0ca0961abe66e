package grafana

import (
	"fmt"
	"strings"
)

// The PromQL building blocks. Every range is $__rate_interval, which Grafana sets to at least
// four scrape intervals.
const rateWindow = "[$__rate_interval]"

var prometheus = &DatasourceRef{Type: "prometheus", UID: DatasourceUID}

// rate is rate(metric{matchers}[$__rate_interval]).
func rate(metric, matchers string) string {
	return "rate(" + sel(metric, matchers) + rateWindow + ")"
}

func sel(metric, matchers string) string {
	if matchers == "" {
		return metric
	}
	return metric + "{" + matchers + "}"
}

func by(labels string) string {
	if labels == "" {
		return "sum"
	}
	return "sum by (" + labels + ")"
}

// sumRate is sum by (labels) (rate(metric{matchers}[...])).
func sumRate(labels, metric, matchers string) string {
	return by(labels) + " (" + rate(metric, matchers) + ")"
}

// orZero makes an event counter's query return data before the first event: a counter with
// labels exists only once a label combination has counted, so the query falls back to zero
// for every series of base (the traffic the events would belong to), keeping its labels.
func orZero(events, base string) string {
	return events + " or (0 * " + base + ")"
}

// orVectorZero falls back to a single 0 when nothing has counted yet.
func orVectorZero(q string) string { return q + " or vector(0)" }

// ratio is num/den, with num falling back to 0 where den has data (an error ratio of 0
// rather than no data when nothing failed).
func ratio(num, den string) string {
	return "(" + orZero(num, den) + ") / " + den
}

// quantileTargets are p50, p95 and p99 of a histogram, summed by labels (plus le).
func quantileTargets(labels, metric, matchers, legend string) []Target {
	le := "le"
	if labels != "" {
		le = labels + ", le"
	}
	var ts []Target
	for _, q := range [][2]string{{"0.5", "p50"}, {"0.95", "p95"}, {"0.99", "p99"}} {
		q, name := q[0], q[1]
		ts = append(ts, target(
			fmt.Sprintf("histogram_quantile(%s, %s (%s))", q, by(le), rate(metric+"_bucket", matchers)),
			strings.TrimSpace(legend+" "+name)))
	}
	return ts
}

func target(expr, legend string) Target {
	return Target{Datasource: prometheus, Expr: expr, LegendFormat: legend, Range: true}
}

// panel options.
type opt func(*Panel)

func unit(u string) opt {
	return func(p *Panel) { p.fieldDefaults().Unit = u }
}

func desc(d string) opt { return func(p *Panel) { p.Description = d } }

// stacked draws the series stacked (parts of one whole).
func stacked() opt {
	return func(p *Panel) {
		p.fieldDefaults().Custom = map[string]any{"stacking": map[string]any{"mode": "normal"}, "fillOpacity": 30}
	}
}

// traces links the panel to a Jaeger search; service is a service name or a variable.
func traces(service string) opt {
	return func(p *Panel) {
		p.Links = append(p.Links, Link{Title: "Traces of " + service + " in Jaeger",
			URL: "${jaeger_url}/search?service=" + service, TargetBlank: true})
	}
}

// seriesTraces adds a data link from each series to the Jaeger search of the service named by
// its label, and a panel link to Jaeger's search page.
func seriesTraces(label string) opt {
	return func(p *Panel) {
		p.fieldDefaults().Links = append(p.fieldDefaults().Links, Link{
			Title: "Traces of ${__field.labels." + label + "} in Jaeger",
			URL:   "${jaeger_url}/search?service=${__field.labels." + label + "}", TargetBlank: true})
		p.Links = append(p.Links, Link{Title: "Jaeger", URL: "${jaeger_url}/search", TargetBlank: true})
	}
}

func (p *Panel) fieldDefaults() *FieldDefaults {
	if p.FieldConfig == nil {
		p.FieldConfig = &FieldConfig{Overrides: []any{}}
	}
	return &p.FieldConfig.Defaults
}

// layout places panels left to right on Grafana's 24-column grid, numbering them.
type layout struct {
	d      *Dashboard
	x, y   int
	rowH   int
	nextID int
}

func newLayout(d *Dashboard) *layout { return &layout{d: d, nextID: 1} }

func (l *layout) place(p Panel, w, h int) {
	if l.x+w > 24 {
		l.x, l.y, l.rowH = 0, l.y+l.rowH, 0
	}
	p.ID = l.nextID
	l.nextID++
	p.GridPos = GridPos{H: h, W: w, X: l.x, Y: l.y}
	l.x += w
	l.rowH = max(l.rowH, h)
	l.d.Panels = append(l.d.Panels, p)
}

// row starts a new line with a row header.
func (l *layout) row(title string) {
	if l.x > 0 {
		l.x, l.y, l.rowH = 0, l.y+l.rowH, 0
	}
	f := false
	l.place(Panel{Type: "row", Title: title, Collapsed: &f}, 24, 1)
	l.x, l.y, l.rowH = 0, l.y+1, 0
}

func (l *layout) timeseries(title string, w int, targets []Target, opts ...opt) {
	l.add("timeseries", title, w, 8, targets, opts)
}

func (l *layout) stat(title string, w int, targets []Target, opts ...opt) {
	l.add("stat", title, w, 4, targets, append([]opt{func(p *Panel) {
		p.Options = map[string]any{"reduceOptions": map[string]any{"calcs": []string{"lastNotNull"}, "fields": "", "values": false},
			"colorMode": "value", "graphMode": "area", "textMode": "auto"}
	}}, opts...))
}

func (l *layout) add(kind, title string, w, h int, targets []Target, opts []opt) {
	p := Panel{Type: kind, Title: title, Datasource: prometheus}
	for i := range targets {
		targets[i].RefID = string(rune('A' + i))
	}
	p.Targets = targets
	p.fieldDefaults()
	for _, o := range opts {
		o(&p)
	}
	if kind == "timeseries" {
		p.Options = map[string]any{"legend": map[string]any{"displayMode": "table", "placement": "bottom", "calcs": []string{"mean", "max"}},
			"tooltip": map[string]any{"mode": "multi", "sort": "desc"}}
	}
	l.place(p, w, h)
}

func ts(targets ...Target) []Target { return targets }

// jaegerVar is the Jaeger UI address every trace link starts with.
var jaegerVar = Variable{Name: "jaeger_url", Label: "Jaeger URL", Type: "textbox",
	Description: "The Jaeger UI the sidecars' traces go to (make demo prints it)",
	Query:       "http://127.0.0.1:16686", Current: Current{Text: "http://127.0.0.1:16686", Value: "http://127.0.0.1:16686"},
	Options: []Current{{Text: "http://127.0.0.1:16686", Value: "http://127.0.0.1:16686"}}}

// serviceVar is a variable over the values of label in the series of metric.
func serviceVar(metric, label string) Variable {
	q := "label_values(" + metric + ", " + label + ")"
	return Variable{Name: "service", Label: "Service", Type: "query", Query: q, Definition: q, Datasource: prometheus,
		Refresh: 2, Sort: 1, Current: Current{}, Options: []Current{}}
}

func newDashboard(uid, title, description string, vars ...Variable) Dashboard {
	return Dashboard{
		UID: uid, Title: title, Description: description, Tags: []string{"podmesh"}, Editable: true,
		GraphTooltip: 1, SchemaVersion: SchemaVersion, Version: 1, Refresh: "10s",
		Time: TimeRange{From: "now-30m", To: "now"}, Timezone: "browser",
		Templating: Templating{List: append(vars, jaegerVar)},
		Links:      []Link{},
	}
}

package grafana_test

import (
	"slices"
	"testing"

	"github.com/podmesh/podmesh/deploy/grafana"
)

func TestVariables(t *testing.T) {
	vars := map[string]string{"service": "web"}
	for _, tc := range []struct {
		in, out string
		refs    []string
	}{
		{`rate(x{service="$service"}[$__rate_interval])`, `rate(x{service="web"}[1m])`, []string{"service", "__rate_interval"}},
		{`${jaeger_url}/search?service=${service}`, `${jaeger_url}/search?service=web`, []string{"jaeger_url", "service"}},
		{`${jaeger_url}/search?service=${__field.labels.destination}`, `${jaeger_url}/search?service=${__field.labels.destination}`, []string{"jaeger_url", "__field"}},
		{`sum(up) or vector(0)`, `sum(up) or vector(0)`, nil},
		{`$servicex`, `$servicex`, []string{"servicex"}}, // another variable, not $service
	} {
		if got := grafana.ForPrometheus(tc.in, "1m", vars); got != tc.out {
			t.Errorf("ForPrometheus(%q) = %q, want %q", tc.in, got, tc.out)
		}
		if got := grafana.VariableRefs(tc.in); !slices.Equal(got, tc.refs) {
			t.Errorf("VariableRefs(%q) = %q, want %q", tc.in, got, tc.refs)
		}
	}
}

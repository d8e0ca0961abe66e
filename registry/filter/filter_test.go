package filter_test

import (
	"errors"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/registry/filter"
)

// Three health entries shaped like /v1/health/service results. web1 has tags, meta, tagged
// addresses and a critical service check; web2 is a connect proxy whose checks all pass;
// web3 has nil tags, nil meta and no checks.
var (
	web1 = &api.ServiceEntry{
		Node: &api.Node{ID: "6e3b", Node: "n1", Address: "10.0.0.1", Datacenter: "dc1",
			TaggedAddresses: map[string]string{"lan": "10.0.0.1", "wan": "1.2.3.4"},
			Meta:            map[string]string{"rack_name": "2304", "env": "prod"}},
		Service: &api.AgentService{ID: "web-1", Service: "web", Tags: []string{"canary", "v1"},
			Meta: map[string]string{"version": "1.0.0", "build-id": "abc", "empty": ""},
			Port: 8080, Address: "10.0.0.1",
			TaggedAddresses:   map[string]api.ServiceAddress{"lan": {Address: "10.0.0.1", Port: 8443}},
			Weights:           api.AgentWeights{Passing: 10, Warning: 1},
			EnableTagOverride: true},
		Checks: api.HealthChecks{
			{Node: "n1", CheckID: "serfHealth", Name: "Serf Health Status", Status: "passing"},
			{Node: "n1", CheckID: "service:web-1", Status: "critical", ServiceID: "web-1", ServiceName: "web",
				ServiceTags: []string{"canary", "v1"},
				Definition: api.HealthCheckDefinition{HTTP: "http://10.0.0.1:8080/health",
					Header: map[string][]string{"X-Probe": {"yes"}}, Interval: api.ReadableDuration(10 * time.Second)}},
		},
	}
	web2 = &api.ServiceEntry{
		Node: &api.Node{Node: "n2", Address: "10.0.0.2", Meta: map[string]string{"rack_name": "2305"}},
		Service: &api.AgentService{Kind: api.ServiceKindConnectProxy, ID: "web-2", Service: "web",
			Tags: []string{"v2"}, Meta: map[string]string{"version": "2.0.0"}, Port: 9090,
			Weights: api.AgentWeights{Passing: 1, Warning: 1},
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web",
				Upstreams: []api.Upstream{{DestinationName: "db", LocalBindPort: 5432}}}},
		Checks: api.HealthChecks{
			{Node: "n2", CheckID: "serfHealth", Status: "passing"},
			{Node: "n2", CheckID: "service:web-2", Status: "passing", ServiceID: "web-2"},
		},
	}
	web3 = &api.ServiceEntry{
		Node:    &api.Node{Node: "n3", Address: "10.0.0.3"},
		Service: &api.AgentService{ID: "web-3", Service: "web", Port: 80},
	}
	entries = []*api.ServiceEntry{web1, web2, web3}
)

// matchAll parses expr and matches it against each value, returning "1" or "0" per value.
func matchAll[T any](t *testing.T, expr string, values []T) string {
	t.Helper()
	f, err := filter.Parse(expr)
	if err != nil {
		t.Fatalf("Parse(%q): %v", expr, err)
	}
	var b strings.Builder
	for _, v := range values {
		ok, err := f.Match(v)
		if err != nil {
			t.Fatalf("Match(%q): %v", expr, err)
		}
		if ok {
			b.WriteByte('1')
		} else {
			b.WriteByte('0')
		}
	}
	return b.String()
}

type matchCase struct {
	expr string
	want string // one digit per value: 1 matches, 0 does not
}

func runMatchTable[T any](t *testing.T, values []T, cases []matchCase) {
	t.Helper()
	for _, tc := range cases {
		if got := matchAll(t, tc.expr, values); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.expr, got, tc.want)
		}
	}
}

func TestMatchServiceEntry(t *testing.T) {
	runMatchTable(t, entries, []matchCase{
		// == and != on strings, quoted or bare.
		{`Service.Service == web`, "111"},
		{`Service.Service == "web"`, "111"},
		{`Service.Service != web`, "000"},
		{`Service.ID == "web-2"`, "010"},
		{`Service.ID != "web-2"`, "101"},
		{`Service.ID == "web\u002d2"`, "010"},
		{"Service.ID == `web-2`", "010"},
		// in / contains on a []string, bare and quoted values.
		{`Service.Tags contains canary`, "100"},
		{`Service.Tags contains "canary"`, "100"},
		{`"canary" in Service.Tags`, "100"},
		{`canary in Service.Tags`, "100"},
		{`Service.Tags not contains canary`, "011"},
		{`"canary" not in Service.Tags`, "011"},
		{`Service.Tags contains cana`, "000"}, // element equality, not substring
		{`Service.Tags is empty`, "001"},
		{`Service.Tags is not empty`, "110"},
		// in / contains on a string is a substring test.
		{`Service.ID contains "eb-"`, "111"},
		{`"-3" in Service.ID`, "001"},
		{`Service.ID not contains "1"`, "011"},
		// matches: Go regexp, unanchored.
		{`Service.ID matches "^web-[12]$"`, "110"},
		{`Service.ID not matches "^web-[12]$"`, "001"},
		{`Service.ID matches "2"`, "010"},
		{"Service.ID matches `^web-\\d$`", "111"},
		// Map entries, including a missing key (web3 has a nil Meta map).
		{`Service.Meta.version == "1.0.0"`, "100"},
		{`Service.Meta.version != "1.0.0"`, "011"},
		{`Service.Meta.version matches "^[0-9]"`, "110"},
		{`Service.Meta.version not matches "^1"`, "011"},
		{`Service.Meta.version contains "."`, "110"},
		{`Service.Meta.version not contains "."`, "001"},
		{`Service.Meta.version is empty`, "001"},
		{`Service.Meta.version is not empty`, "110"},
		{`Service.Meta.empty is empty`, "111"},
		{`Service.Meta["build-id"] == abc`, "100"},
		{"Service.Meta[`build-id`] == abc", "100"},
		{`Service.Meta[ "build-id" ] == abc`, "100"},
		// in / contains on a map is key membership.
		{`"version" in Service.Meta`, "110"},
		{`Service.Meta contains version`, "110"},
		{`"empty" in Service.Meta`, "100"},
		{`"version" not in Service.Meta`, "001"},
		{`Service.Meta is empty`, "001"},
		{`Service.Meta is not empty`, "110"},
		{`Node.Meta.rack_name == "2304"`, "100"},
		{`Node.Meta.rack_name == 2304`, "100"},
		{`Node.Meta.rack_name != 2304`, "011"},
		{`Node.Node matches "^n[13]$"`, "101"},
		{`Node.TaggedAddresses.wan == "1.2.3.4"`, "100"},
		// Numbers and booleans, converted to the field's kind.
		{`Service.Port == 8080`, "100"},
		{`Service.Port != 8080`, "011"},
		{`Service.Port == "8080"`, "100"},
		{`Service.Port == "0x1F90"`, "100"},
		{`Service.Port == -1`, "000"},
		{`Service.Port == 80`, "001"},
		{`Service.EnableTagOverride == true`, "100"},
		{`Service.EnableTagOverride == false`, "011"},
		{`Service.EnableTagOverride != T`, "011"},
		{`Service.Weights.Passing == 10`, "100"},
		// A map of structs; a missing key is absent (so != holds).
		{`Service.TaggedAddresses.lan.Port == 8443`, "100"},
		{`Service.TaggedAddresses.lan.Address != "10.0.0.1"`, "011"},
		{`"lan" in Service.TaggedAddresses`, "100"},
		{`Service.Kind == "connect-proxy"`, "010"},
		{`Service.Kind == ""`, "101"},
		{`Service.Kind is empty`, "101"},
		// Nil pointers (Proxy is nil on web1 and web3) are absent values.
		{`Service.Proxy.DestinationServiceName == web`, "010"},
		{`Service.Proxy.DestinationServiceName != web`, "101"},
		{`Service.Proxy.Upstreams.DestinationName == db`, "010"},
		{`Service.Proxy.Upstreams is empty`, "101"},
		// A selector through a slice of structs holds if it holds for ANY element.
		{`Checks.Status == passing`, "110"},
		{`Checks.Status == critical`, "100"},
		{`Checks.Status != passing`, "100"},
		{`not Checks.Status == critical`, "011"},
		{`not Checks.Status != passing`, "011"},
		{`Checks is empty`, "001"},
		{`Checks is not empty`, "110"},
		{`Checks.CheckID == "service:web-2"`, "010"},
		{`Checks.ServiceTags contains canary`, "100"},
		{`Checks.ServiceTags is empty`, "110"},
		{`Checks.Definition.Header["X-Probe"] contains yes`, "100"},
		{`Checks.Definition.Interval == 10000000000`, "100"},
		{`Checks.Definition.HTTP matches "/health$"`, "100"},
		// Boolean connectives and grouping.
		{`Service.Tags contains canary or Service.Port == 80`, "101"},
		{`Service.Tags contains canary and Service.Port == 80`, "000"},
		{`not Service.Tags contains canary and not Service.Port == 80`, "010"},
		{`not (Service.Tags contains canary or Service.Port == 80)`, "010"},
		{`Service.Service == web and (Service.Port == 9090 or Service.Port == 80)`, "011"},
		{`((Service.Port == 80))`, "001"},
		{`not not Service.Port == 80`, "001"},
		{"\tService.Port==80\r\n", "001"},
	})
}

// Every combination of three booleans against the precedence Consul documents: not binds
// tighter than and, and tighter than or.
func TestPrecedence(t *testing.T) {
	type abc struct{ A, B, C bool }
	cases := []struct {
		expr string
		want func(a, b, c bool) bool
	}{
		{`not A == true or B == true and C == true`, func(a, b, c bool) bool { return !a || b && c }},
		{`(not A == true or B == true) and C == true`, func(a, b, c bool) bool { return (!a || b) && c }},
		{`not (A == true or B == true) and C == true`, func(a, b, c bool) bool { return !(a || b) && c }},
		{`not (A == true or B == true and C == true)`, func(a, b, c bool) bool { return !(a || b && c) }},
		{`A == true and not B == true or C == true`, func(a, b, c bool) bool { return a && !b || c }},
		{`A == true and (not B == true or C == true)`, func(a, b, c bool) bool { return a && (!b || c) }},
		{`A == true or B == true and not C == true or not A == true and C == true`,
			func(a, b, c bool) bool { return a || b && !c || !a && c }},
	}
	for _, tc := range cases {
		f, err := filter.Parse(tc.expr)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.expr, err)
		}
		for i := 0; i < 8; i++ {
			v := abc{i&4 != 0, i&2 != 0, i&1 != 0}
			got, err := f.Match(v)
			if err != nil {
				t.Fatalf("Match(%q): %v", tc.expr, err)
			}
			if want := tc.want(v.A, v.B, v.C); got != want {
				t.Errorf("%s with %+v: got %v, want %v", tc.expr, v, got, want)
			}
		}
	}
}

func TestMatchCatalogService(t *testing.T) {
	services := []*api.CatalogService{
		{Node: "n1", Address: "10.0.0.1", NodeMeta: map[string]string{"rack_name": "2304"},
			ServiceID: "web-1", ServiceName: "web", ServiceTags: []string{"canary"},
			ServiceMeta: map[string]string{"version": "1"}, ServicePort: 8080,
			ServiceTaggedAddresses: map[string]api.ServiceAddress{"wan": {Address: "1.2.3.4", Port: 443}}},
		{Node: "n2", Address: "10.0.0.2", ServiceID: "db-1", ServiceName: "db", ServicePort: 5432},
	}
	runMatchTable(t, services, []matchCase{
		{`NodeMeta.rack_name == "2304"`, "10"},
		{`NodeMeta is empty`, "01"},
		{`ServiceTags contains "canary"`, "10"},
		{`ServiceTags is empty`, "01"},
		{`ServiceMeta.version != "2"`, "11"},
		{`ServicePort == 5432`, "01"},
		{`ServiceName == web and Node matches "^n"`, "10"},
		{`ServiceTaggedAddresses.wan.Port == 443`, "10"},
		{`Address contains ".2"`, "01"},
	})
}

func TestMatchAgentService(t *testing.T) {
	services := []*api.AgentService{
		{ID: "api-1", Service: "api", Tags: []string{"x"}, Meta: map[string]string{"env": "prod"}, Port: 7000},
		{ID: "api-2", Service: "api", Tags: []string{"y"}, Meta: map[string]string{"env": "dev"}, Port: 7001,
			Connect: &api.AgentServiceConnect{Native: true}},
	}
	runMatchTable(t, services, []matchCase{
		{`Service == api`, "11"},
		{`Meta.env == prod`, "10"},
		{`Tags contains y`, "01"},
		{`Port == 7000 or Port == 7001`, "11"},
		{`Connect.Native == true`, "01"},
		{`Connect.Native != true`, "10"},
	})
}

func TestMatchHealthCheck(t *testing.T) {
	checks := []*api.HealthCheck{
		{Node: "n1", CheckID: "service:web-1", Status: "critical", ServiceName: "web", ServiceTags: []string{"canary"}},
		{Node: "n2", CheckID: "serfHealth", Status: "passing"},
	}
	runMatchTable(t, checks, []matchCase{
		{`Status == critical`, "10"},
		{`ServiceName != ""`, "10"},
		{`ServiceName is empty`, "01"},
		{`ServiceTags contains canary`, "10"},
		{`CheckID matches "^serf"`, "01"},
		{`n1 in Node`, "10"},
	})
}

// The filters Prometheus' consul_sd_configs sends (filter for the catalog, health_filter for
// health), including the one from its test suite, taken from the URL as it goes on the wire.
func TestPrometheusFilters(t *testing.T) {
	q, err := url.ParseQuery("filter=NodeMeta.rack_name+%3D%3D+%222304%22&index=1&wait=120000ms")
	if err != nil {
		t.Fatal(err)
	}
	wire := q.Get("filter")
	if wire != `NodeMeta.rack_name == "2304"` {
		t.Fatalf("decoded filter %q", wire)
	}
	catalog := []*api.CatalogService{
		{ServiceName: "web", NodeMeta: map[string]string{"rack_name": "2304"}, ServiceTags: []string{"canary"}},
		{ServiceName: "web", NodeMeta: map[string]string{"rack_name": "2305"}},
	}
	runMatchTable(t, catalog, []matchCase{
		{wire, "10"},
		{`ServiceTags contains "canary"`, "10"},
		{`"canary" in ServiceTags`, "10"},
		{`ServiceName == "web" and NodeMeta.rack_name != "2305"`, "10"},
	})
	runMatchTable(t, entries, []matchCase{
		{`Service.Tags contains "canary"`, "100"},
		{`Service.Meta.version == "1.0.0"`, "100"},
		{`Node.Meta.rack_name == "2304"`, "100"},
		{`Checks.Status == "passing"`, "110"},
		{`Service.Tags contains "canary" and Node.Meta.env == "prod"`, "100"},
	})
}

// Scalar kinds, pointers, arrays, maps of other kinds, struct tags and embedding.
type Inner struct{ Inner string }

type kinds struct {
	I8      int8
	U16     uint16
	U       uint
	F32     float32
	F64     float64
	B       bool
	D       time.Duration
	PS      *string
	PI      *int
	SP      []*string
	Arr     [2]string
	M       map[string]int
	MK      map[api.ServiceKind]string
	Nested  []map[string]string
	Any     map[string]any
	hidden  string
	Hidden  string `bexpr:"-"`
	Renamed string `bexpr:"renamed,alias"`
	Inner
}

func TestMatchKinds(t *testing.T) {
	hello, b := "hello", "b"
	three := 3
	v := kinds{I8: -5, U16: 65535, U: 5, F32: 0.1, F64: 2, B: true, D: time.Second,
		PS: &hello, PI: &three, SP: []*string{nil, &b}, Arr: [2]string{"x", "y"},
		M: map[string]int{"k": 1}, MK: map[api.ServiceKind]string{"a": "x"},
		Nested: []map[string]string{{"k": "v"}}, Any: map[string]any{"k": 1},
		hidden: "h", Hidden: "h", Renamed: "r", Inner: Inner{"z"}}
	noPtr := kinds{}
	runMatchTable(t, []kinds{v, noPtr}, []matchCase{
		{`I8 == -5`, "10"},
		{`U16 == 65535`, "10"},
		{`U == "0b101"`, "10"},
		{`F32 == 0.1`, "10"},
		{`F64 == 2`, "10"},
		{`F64 == 2.0`, "10"},
		{`B == 1`, "10"},
		{`D == 1000000000`, "10"},
		{`PS == hello`, "10"},
		{`PI == 3`, "10"},
		{`PI != 3`, "01"},
		{`SP contains b`, "10"},
		{`Arr contains y`, "10"},
		{`Arr is empty`, "00"},
		{`"k" in M`, "10"},
		{`M.k == 1`, "10"},
		{`M.zz == 1`, "00"},
		{`MK.a == x`, "10"},
		{`"a" in MK`, "10"},
		{`Nested.k == v`, "10"},
		{`"k" in Any`, "10"},
		{`renamed == r`, "10"},
		{`alias == r`, "10"},
		{`Inner.Inner == z`, "10"},
	})
	// A map with string keys works as the root too.
	runMatchTable(t, []map[string]string{{"a": "1"}, {}}, []matchCase{
		{`a == 1`, "10"},
		{`a is empty`, "01"},
		{`a contains 1 or b is empty`, "11"},
	})
}

func TestValidateErrors(t *testing.T) {
	entry := reflect.TypeFor[*api.ServiceEntry]()
	cases := []struct {
		expr string
		t    reflect.Type
		want string
	}{
		{`Service.Bogus == 1`, entry, `filter: unknown selector "Service.Bogus"`},
		{`Service.Bogus.x == 1`, entry, `filter: unknown selector "Service.Bogus"`},
		{`Bogus == 1 or Service.Port == 1`, entry, `filter: unknown selector "Bogus"`},
		{`Service.Port == 1 and service.port == 1`, entry, `filter: unknown selector "service"`},
		{`Service.Namespace == default`, entry, `filter: unknown selector "Service.Namespace"`}, // bexpr:"-"
		{`Service.CreateIndex == 1`, entry, `filter: unknown selector "Service.CreateIndex"`},
		{`Service.Tags.x == 1`, entry, `filter: unknown selector "Service.Tags.x"`},
		{`Service.Meta.version.x == 1`, entry, `filter: unknown selector "Service.Meta.version.x"`},
		{`Service.Meta["a b"].x == 1`, entry, `filter: unknown selector "Service.Meta[\"a b\"].x"`},
		{`Service.Proxy.Config.foo == x`, entry, `filter: unknown selector "Service.Proxy.Config"`}, // bexpr:"-"
		{`Service.Port == abc`, entry, `filter: selector "Service.Port": cannot convert "abc" to int: invalid syntax`},
		{`Service.Port == 80.5`, entry, `filter: selector "Service.Port": cannot convert "80.5" to int: invalid syntax`},
		{`Service.EnableTagOverride == yes`, entry, `filter: selector "Service.EnableTagOverride": cannot convert "yes" to bool: invalid syntax`},
		{`Checks.Definition.Interval == "10s"`, entry, `filter: selector "Checks.Definition.Interval": cannot convert "10s" to api.ReadableDuration: invalid syntax`},
		{`Service.Tags == canary`, entry, `filter: operator "==" is not supported on selector "Service.Tags" of type []string`},
		{`Service.Tags matches canary`, entry, `filter: operator "matches" is not supported on selector "Service.Tags" of type []string`},
		{`Service.Port contains 8`, entry, `filter: operator "contains" is not supported on selector "Service.Port" of type int`},
		{`"8" not in Service.Port`, entry, `filter: operator "not in" is not supported on selector "Service.Port" of type int`},
		{`Service.Port is empty`, entry, `filter: operator "is empty" is not supported on selector "Service.Port" of type int`},
		{`Service == web`, entry, `filter: operator "==" is not supported on selector "Service" of type *api.AgentService`},
		{`Service is not empty`, entry, `filter: operator "is not empty" is not supported on selector "Service" of type *api.AgentService`},
		{`Checks contains x`, entry, `filter: operator "contains" is not supported on selector "Checks" of type api.HealthChecks`},
		{`Any.k == 1`, reflect.TypeFor[kinds](), `filter: operator "==" is not supported on selector "Any.k" of type interface {}`},
		{`Any.k.x == 1`, reflect.TypeFor[kinds](), `filter: unknown selector "Any.k.x"`},
		{`I8 == 300`, reflect.TypeFor[kinds](), `filter: selector "I8": cannot convert "300" to int8: value out of range`},
		{`U16 == -1`, reflect.TypeFor[kinds](), `filter: selector "U16": cannot convert "-1" to uint16: invalid syntax`},
		{`hidden == h`, reflect.TypeFor[kinds](), `filter: unknown selector "hidden"`},
		{`Hidden == h`, reflect.TypeFor[kinds](), `filter: unknown selector "Hidden"`},
		{`Renamed == r`, reflect.TypeFor[kinds](), `filter: unknown selector "Renamed"`},
		{`Inner == z`, reflect.TypeFor[kinds](), `filter: operator "==" is not supported on selector "Inner" of type filter_test.Inner`},
		{`a == 1`, reflect.TypeFor[[]string](), `filter: cannot filter values of type []string: need a struct, a map with string keys or a pointer to one`},
		{`a == 1`, reflect.TypeFor[map[int]string](), `filter: cannot filter values of type map[int]string: need a struct, a map with string keys or a pointer to one`},
		{`a == 1`, nil, `filter: cannot validate against a nil type`},
	}
	for _, tc := range cases {
		f, err := filter.Parse(tc.expr)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.expr, err)
		}
		err = f.Validate(tc.t)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: Validate error\n got: %v\nwant: %s", tc.expr, err, tc.want)
			continue
		}
		if tc.t == nil {
			continue
		}
		// Match reports the same error for a value of that type, and keeps reporting it.
		for range 2 {
			if _, merr := f.Match(reflect.New(tc.t).Elem().Interface()); merr == nil || merr.Error() != tc.want {
				t.Errorf("%s: Match error %v, want %s", tc.expr, merr, tc.want)
			}
		}
	}
	// A conversion error wraps strconv's.
	f, _ := filter.Parse(`Service.Port == 99999999999999999999`)
	if err := f.Validate(entry); !errors.Is(err, strconv.ErrRange) {
		t.Errorf("Validate = %v, want it to wrap strconv.ErrRange", err)
	}
}

func TestMatchErrors(t *testing.T) {
	f, err := filter.Parse(`Service.Port == 80`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Match(nil); err == nil || err.Error() != "filter: cannot match a nil value" {
		t.Errorf("Match(nil) = %v", err)
	}
	if _, err := f.Match((*api.ServiceEntry)(nil)); err == nil || err.Error() != "filter: cannot match a nil *api.ServiceEntry" {
		t.Errorf("Match(nil pointer) = %v", err)
	}
	// The same filter fits several types; each compiles separately.
	if err := f.Validate(reflect.TypeFor[api.ServiceEntry]()); err != nil {
		t.Errorf("Validate(ServiceEntry) = %v", err)
	}
	if err := f.Validate(reflect.TypeFor[api.CatalogService]()); err == nil {
		t.Error("Validate(CatalogService) passed; it has no Service field")
	}
	if ok, err := f.Match(*web3); !ok || err != nil { // by value, not pointer
		t.Errorf("Match(ServiceEntry value) = %v, %v", ok, err)
	}
	var nilFilter *filter.Filter
	if ok, err := nilFilter.Match(web1); !ok || err != nil || nilFilter.String() != "" {
		t.Errorf("nil filter: Match = %v, %v; String = %q", ok, err, nilFilter.String())
	}
}

// Concurrent first use of a filter (compiling per type) and matching must be race-free.
func TestConcurrentMatch(t *testing.T) {
	f, err := filter.Parse(`Service.Tags contains canary and Checks.Status == critical`)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				e := entries[(g+i)%len(entries)]
				ok, err := f.Match(e)
				if err != nil || ok != (e == web1) {
					errs <- errors.Join(err, errors.New("wrong result for "+e.Service.ID))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Matching the common Prometheus-style filters allocates nothing.
func TestMatchDoesNotAllocate(t *testing.T) {
	f, err := filter.Parse(`Service.Tags contains "canary" and Node.Meta.rack_name == "2304" and Checks.Status != "passing" and Service.ID matches "^web-"`)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := f.Match(web1); !ok || err != nil {
		t.Fatalf("Match = %v, %v", ok, err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = f.Match(web1) }); n != 0 {
		t.Errorf("Match allocates %v times per call, want 0", n)
	}
}

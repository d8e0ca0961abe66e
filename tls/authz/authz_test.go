package authz

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/tls/spiffe"
)

func ixn(src, dst string, action Action) *Intention {
	sp, sns, sn, err := ParseServiceName(src)
	if err != nil {
		panic(err)
	}
	dp, dns, dn, err := ParseServiceName(dst)
	if err != nil {
		panic(err)
	}
	x := &Intention{SourcePartition: sp, SourceNS: sns, SourceName: sn, DestinationPartition: dp, DestinationNS: dns, DestinationName: dn, Action: action}
	x.SetDefaults()
	return x
}

func l7(src, dst string) *Intention {
	x := ixn(src, dst, "")
	x.Permissions = []*Permission{{Action: Allow, HTTP: &HTTPPermission{PathPrefix: "/x"}}}
	return x
}

func svc(ns, name string) spiffe.ServiceID {
	return spiffe.ServiceID{TrustDomain: "t.consul", Namespace: ns, Datacenter: "dc1", Service: name}
}

func TestPrecedence(t *testing.T) {
	tests := []struct {
		src, dst string
		want     int
	}{
		{"web", "db", 9},
		{"*", "db", 8},
		{"*/*", "db", 7},
		{"web", "*", 6},
		{"*", "*", 5},
		{"*/*", "*", 4},
		{"web", "*/*", 3},
		{"*", "*/*", 2},
		{"*/*", "*/*", 1},
		{"a/web", "b/db", 9},
		{"a/*", "b/db", 8},
	}
	for _, tc := range tests {
		if got := ixn(tc.src, tc.dst, Allow).Precedence; got != tc.want {
			t.Errorf("%s → %s: precedence %d, want %d", tc.src, tc.dst, got, tc.want)
		}
	}
}

func TestSortOrder(t *testing.T) {
	list := []*Intention{
		ixn("*", "*", Allow),
		ixn("web", "db", Deny),
		ixn("*", "db", Allow),
		ixn("api", "db", Allow),
		ixn("web", "*", Allow),
		ixn("a/web", "db", Allow),
		ixn("*/*", "*/*", Deny),
	}
	Sort(list)
	var got []string
	for _, x := range list {
		got = append(got, x.SourceNS+"/"+x.SourceName+"→"+x.DestinationNS+"/"+x.DestinationName)
	}
	want := []string{
		"a/web→default/db", // 9, SourceNS "a" < "default"
		"default/api→default/db",
		"default/web→default/db",
		"default/*→default/db", // 8
		"default/web→default/*",
		"default/*→default/*",
		"*/*→*/*",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("order\n got %v\nwant %v", got, want)
	}
}

func TestValidate(t *testing.T) {
	long := strings.Repeat("x", MaxDescriptionLength+1)
	tooMany := map[string]string{}
	for i := range MaxMetaPairs + 1 {
		tooMany[strings.Repeat("k", i+1)] = "v"
	}
	tests := []struct {
		name  string
		mut   func(*Intention)
		field string // "" means valid
		msg   string
	}{
		{"valid allow", func(x *Intention) {}, "", ""},
		{"valid wildcards", func(x *Intention) { x.SourceNS, x.SourceName = "*", "*" }, "", ""},
		{"valid L7", func(x *Intention) {
			x.Action = ""
			x.Permissions = []*Permission{{Action: Deny, HTTP: &HTTPPermission{PathExact: "/a", Methods: []string{"GET"}, Header: []HTTPHeaderPermission{{Name: "x", Present: true}}}}}
		}, "", ""},
		{"no source", func(x *Intention) { x.SourceName = "" }, "SourceName", "must be set"},
		{"no destination", func(x *Intention) { x.DestinationName = "" }, "DestinationName", "must be set"},
		{"partial source", func(x *Intention) { x.SourceName = "web*" }, "SourceName", "partial values"},
		{"partial destination", func(x *Intention) { x.DestinationName = "*db" }, "DestinationName", "partial values"},
		{"partial source ns", func(x *Intention) { x.SourceNS = "de*" }, "SourceNS", "partial values"},
		{"partial destination ns", func(x *Intention) { x.DestinationNS = "*x" }, "DestinationNS", "partial values"},
		{"exact source under wildcard ns", func(x *Intention) { x.SourceNS = "*" }, "SourceName", "cannot follow wildcard namespace"},
		{"exact destination under wildcard ns", func(x *Intention) { x.DestinationNS = "*" }, "DestinationName", "cannot follow wildcard namespace"},
		{"bad char", func(x *Intention) { x.SourceName = "a b" }, "SourceName", "invalid character"},
		{"slash", func(x *Intention) { x.DestinationName = "a/b" }, "DestinationName", "invalid character"},
		{"action", func(x *Intention) { x.Action = "maybe" }, "Action", "'allow' or 'deny'"},
		{"no action", func(x *Intention) { x.Action = "" }, "Action", "'allow' or 'deny'"},
		{"action with permissions", func(x *Intention) {
			x.Permissions = []*Permission{{Action: Allow, HTTP: &HTTPPermission{PathPrefix: "/"}}}
		}, "Action", "must be omitted if Permissions"},
		{"permission action", func(x *Intention) {
			x.Action = ""
			x.Permissions = []*Permission{{Action: "x", HTTP: &HTTPPermission{PathPrefix: "/"}}}
		}, "Permissions[0].Action", "'allow' or 'deny'"},
		{"permission empty", func(x *Intention) { x.Action = ""; x.Permissions = []*Permission{{Action: Allow}} }, "Permissions[0]", "HTTP or JWT is required"},
		{"permission nil", func(x *Intention) { x.Action = ""; x.Permissions = []*Permission{nil} }, "Permissions[0]", "must not be null"},
		{"two paths", func(x *Intention) {
			x.Action = ""
			x.Permissions = []*Permission{{Action: Allow, HTTP: &HTTPPermission{PathPrefix: "/", PathExact: "/a"}}}
		}, "Permissions[0].HTTP", "at most one of PathExact"},
		{"relative path", func(x *Intention) {
			x.Action = ""
			x.Permissions = []*Permission{{Action: Allow, HTTP: &HTTPPermission{PathExact: "a"}}}
		}, "Permissions[0].HTTP.PathExact", "starting with '/'"},
		{"bad regex", func(x *Intention) {
			x.Action = ""
			x.Permissions = []*Permission{{Action: Allow, HTTP: &HTTPPermission{PathRegex: "("}}}
		}, "Permissions[0].HTTP.PathRegex", "invalid regular expression"},
		{"header without name", func(x *Intention) {
			x.Action = ""
			x.Permissions = []*Permission{{Action: Allow, HTTP: &HTTPPermission{Header: []HTTPHeaderPermission{{Exact: "v"}}}}}
		}, "Permissions[0].HTTP.Header[0]", "missing required Name"},
		{"header two matchers", func(x *Intention) {
			x.Action = ""
			x.Permissions = []*Permission{{Action: Allow, HTTP: &HTTPPermission{Header: []HTTPHeaderPermission{{Name: "h", Exact: "v", Prefix: "p"}}}}}
		}, "Permissions[0].HTTP.Header[0]", "only contain one of"},
		{"bad method", func(x *Intention) {
			x.Action = ""
			x.Permissions = []*Permission{{Action: Allow, HTTP: &HTTPPermission{Methods: []string{"FETCH"}}}}
		}, "Permissions[0].HTTP.Methods", "not a valid HTTP method"},
		{"duplicate method", func(x *Intention) {
			x.Action = ""
			x.Permissions = []*Permission{{Action: Allow, HTTP: &HTTPPermission{Methods: []string{"GET", "GET"}}}}
		}, "Permissions[0].HTTP.Methods", "more than once"},
		{"empty http", func(x *Intention) {
			x.Action = ""
			x.Permissions = []*Permission{{Action: Allow, HTTP: &HTTPPermission{}}}
		}, "Permissions[0].HTTP", "should not be empty"},
		{"jwt provider name", func(x *Intention) {
			x.Action = ""
			x.Permissions = []*Permission{{Action: Allow, JWT: &JWTRequirement{Providers: []*JWTProvider{{}}}}}
		}, "Permissions[0].JWT.Providers[0].Name", "is required"},
		{"source type", func(x *Intention) { x.SourceType = "external" }, "SourceType", "must be set to 'consul'"},
		{"partition", func(x *Intention) { x.SourcePartition = "team" }, "SourcePartition", "default partition"},
		{"partition wildcard", func(x *Intention) { x.DestinationPartition = "*" }, "DestinationPartition", "cannot be a wildcard"},
		{"peer", func(x *Intention) { x.SourcePeer = "other" }, "SourcePeer", "not supported"},
		{"sameness", func(x *Intention) { x.SourceSamenessGroup = "g" }, "SourceSamenessGroup", "not supported"},
		{"description", func(x *Intention) { x.Description = long }, "Description", "exceeds maximum length 512"},
		{"meta count", func(x *Intention) { x.Meta = tooMany }, "Meta", "exceeds maximum element count 64"},
		{"meta key", func(x *Intention) { x.Meta = map[string]string{strings.Repeat("k", 129): "v"} }, "Meta key", "exceeds maximum length 128"},
		{"meta value", func(x *Intention) { x.Meta = map[string]string{"k": long} }, "Meta value for key", "exceeds maximum length 512"},
		{"meta blank key", func(x *Intention) { x.Meta = map[string]string{"": "v"} }, "Meta", "blank"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := ixn("web", "db", Allow)
			tc.mut(x)
			err := x.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("valid intention rejected: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want error on %s", tc.field)
			}
			var fe *FieldError
			found := false
			for _, e := range unjoin(err) {
				if errors.As(e, &fe) && fe.Field == tc.field && strings.Contains(fe.Msg, tc.msg) {
					found = true
				}
			}
			if !found {
				t.Fatalf("error %q does not name field %s with %q", err, tc.field, tc.msg)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("message %q does not name the field", err)
			}
		})
	}
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func TestSetDefaults(t *testing.T) {
	x := &Intention{SourceName: "web", DestinationName: "db", Action: Allow, SourcePartition: "default"}
	x.SetDefaults()
	if x.SourceNS != "default" || x.DestinationNS != "default" || x.SourceType != SourceConsul || x.SourcePartition != "" || x.Precedence != 9 {
		t.Fatalf("after SetDefaults: %+v", x)
	}
	if err := x.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseServiceName(t *testing.T) {
	tests := []struct {
		in           string
		p, ns, n     string
		wantErrorish bool
	}{
		{"web", "", "default", "web", false},
		{"ns1/web", "", "ns1", "web", false},
		{"default/ns1/web", "", "ns1", "web", false},
		{"ap/ns1/web", "ap", "ns1", "web", false},
		{"*", "", "default", "*", false},
		{"a/b/c/d", "", "", "", true},
		{"", "", "", "", true},
		{"ns/", "", "", "", true},
	}
	for _, tc := range tests {
		p, ns, n, err := ParseServiceName(tc.in)
		if tc.wantErrorish {
			if err == nil {
				t.Errorf("%q: no error", tc.in)
			}
			continue
		}
		if err != nil || p != tc.p || ns != tc.ns || n != tc.n {
			t.Errorf("%q = %q %q %q %v", tc.in, p, ns, n, err)
		}
	}
}

// consulList is the set of intentions a Consul v1.14.0 dev agent held in a captured session
// (see TestAuthorizeMatchesConsul), written as it would be upserted.
func consulList() []*Intention {
	legacy := ixn("legacy", "zz", Deny)
	legacy.ID = "f9a057f7-009c-335f-8c7e-8e9475985603"
	star := ixn("*", "db", Allow)
	star.Description = "x"
	return []*Intention{ixn("web", "db", Deny), star, l7("api", "db"), ixn("web", "*", Allow), legacy}
}

func TestMatchMatchesConsul(t *testing.T) {
	list := consulList()
	got, err := Match(list, ByDestination, "db")
	if err != nil {
		t.Fatal(err)
	}
	// Consul's GET /v1/connect/intentions/match?by=destination&name=db returned api (L7),
	// web (deny) and * (allow), in that order; web → * has destination * and matches too.
	want := []string{"api→db", "web→db", "*→db", "web→*"}
	if s := names(got); !reflect.DeepEqual(s, want) {
		t.Errorf("by destination db: %v, want %v", s, want)
	}
	got, err = Match(list, BySource, "web")
	if err != nil {
		t.Fatal(err)
	}
	if s, want := names(got), []string{"web→db", "*→db", "web→*"}; !reflect.DeepEqual(s, want) {
		t.Errorf("by source web: %v, want %v", s, want)
	}
	if _, err := Match(list, "sideways", "web"); err == nil {
		t.Error("bad match type accepted")
	}
	if _, err := Match(list, BySource, "a/b/c/d"); err == nil {
		t.Error("bad name accepted")
	}
}

func names(l []*Intention) []string {
	var out []string
	for _, x := range l {
		out = append(out, x.SourceName+"→"+x.DestinationName)
	}
	return out
}

// TestAuthorizeMatchesConsul: the decisions and reason strings are those a Consul v1.14.0
// dev agent returned from POST /v1/agent/connect/authorize for the same intentions.
func TestAuthorizeMatchesConsul(t *testing.T) {
	list := consulList()
	tests := []struct {
		src, dst string
		def      Default
		allowed  bool
		reason   string
	}{
		{"web", "db", DefaultAllow, false, "Matched L4 intention: default/web => default/db (Precedence: 9, Action: DENY)"},
		{"other", "db", DefaultDeny, true, "Matched L4 intention: default/* => default/db (Precedence: 8, Action: ALLOW)"},
		{"api", "db", DefaultAllow, false, "Matched L7 intention: default/api => default/db (Precedence: 9, Permissions: 1)"},
		{"legacy", "zz", DefaultAllow, false, "Matched L4 intention: default/legacy => default/zz (ID: f9a057f7-009c-335f-8c7e-8e9475985603, Precedence: 9, Action: DENY)"},
		{"web", "zzz", DefaultDeny, true, "Matched L4 intention: default/web => default/* (Precedence: 6, Action: ALLOW)"},
		{"web2", "zzz", DefaultAllow, true, "Default behavior configured by ACLs"},
		{"web2", "zzz", DefaultDeny, false, "Default behavior configured by ACLs"},
		{"web2", "zzz", DefaultAllowACLsDisabled, true, "ACLs disabled, access is allowed by default"},
		{"other", "ns2/db", DefaultDeny, false, "Default behavior configured by ACLs"},
	}
	for _, tc := range tests {
		allowed, reason, err := Authorize(list, svc("default", tc.src), tc.dst, tc.def)
		if err != nil {
			t.Fatal(err)
		}
		if allowed != tc.allowed || reason != tc.reason {
			t.Errorf("%s → %s: (%v, %q), want (%v, %q)", tc.src, tc.dst, allowed, reason, tc.allowed, tc.reason)
		}
		table, err := NewTable(list, tc.dst, tc.def)
		if err != nil {
			t.Fatal(err)
		}
		if a2, r2 := table.Authorize(svc("default", tc.src)); a2 != allowed || r2 != reason {
			t.Errorf("table %s → %s: (%v, %q), Authorize gave (%v, %q)", tc.src, tc.dst, a2, r2, allowed, reason)
		}
		ok, err := Check(list, tc.src, tc.dst, tc.def)
		if err != nil || ok != tc.allowed {
			t.Errorf("Check %s → %s = %v, %v", tc.src, tc.dst, ok, err)
		}
	}
}

func TestNamespacesAndPartitions(t *testing.T) {
	list := []*Intention{
		ixn("*/*", "db", Deny),
		ixn("ops/*", "db", Allow),
		ixn("ops/audit", "db", Deny),
		ixn("web", "db", Allow),
	}
	tests := []struct {
		src     spiffe.ServiceID
		allowed bool
		prec    string
	}{
		{svc("default", "web"), true, "Precedence: 9"},
		{svc("default", "other"), false, "Precedence: 7"},
		{svc("ops", "anything"), true, "Precedence: 8"},
		{svc("ops", "audit"), false, "Precedence: 9"},
		{svc("", "web"), true, "Precedence: 9"}, // empty namespace means default
		{spiffe.ServiceID{Partition: "team", Namespace: "default", Service: "web"}, true, "Default behavior"},
		{spiffe.ServiceID{Partition: "default", Namespace: "default", Service: "web"}, true, "Precedence: 9"},
	}
	table, err := NewTable(list, "db", DefaultAllow)
	if err != nil {
		t.Fatal(err)
	}
	if table.Len() != 4 || table.Destination() != "db" || !table.DefaultAllows() {
		t.Errorf("table Len %d Destination %q DefaultAllows %v", table.Len(), table.Destination(), table.DefaultAllows())
	}
	for _, tc := range tests {
		a, r, err := Authorize(list, tc.src, "db", DefaultAllow)
		if err != nil {
			t.Fatal(err)
		}
		if a != tc.allowed || !strings.Contains(r, tc.prec) {
			t.Errorf("%+v: (%v, %q), want %v with %q", tc.src, a, r, tc.allowed, tc.prec)
		}
		if a2, r2 := table.Authorize(tc.src); a2 != a || r2 != r {
			t.Errorf("table %+v: (%v, %q), Authorize (%v, %q)", tc.src, a2, r2, a, r)
		}
	}
	// Peered and foreign-type sources never match a mesh identity.
	peer := ixn("web", "db", Deny)
	peer.SourcePeer = "remote"
	ext := ixn("web", "db", Deny)
	ext.SourceType = "external"
	for _, x := range []*Intention{peer, ext} {
		tb, _ := NewTable([]*Intention{x}, "db", DefaultAllow)
		if a, r := tb.Authorize(svc("default", "web")); !a || r != ReasonDefaultACLs {
			t.Errorf("%+v matched: %v %q", x, a, r)
		}
	}
	if _, err := NewTable(list, "a/b/c/d", DefaultDeny); err == nil {
		t.Error("bad destination accepted")
	}
}

func TestZeroDefaultDenies(t *testing.T) {
	var d Default
	if d.Allowed() || d.String() != "deny" {
		t.Fatal("zero Default allows")
	}
	for s, want := range map[string]Default{"allow": DefaultAllow, "deny": DefaultDeny} {
		if got, err := ParseDefault(s); err != nil || got != want || got.String() != s {
			t.Errorf("ParseDefault(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseDefault("Allow"); err == nil {
		t.Error("ParseDefault accepted \"Allow\"")
	}
}

// randomList makes intentions over a small alphabet so that sources collide often.
func randomList(r *rand.Rand, n int) []*Intention {
	nss := []string{"default", "ops", "*"}
	svcs := []string{"web", "db", "api", "*"}
	var out []*Intention
	for range n {
		x := &Intention{SourceNS: nss[r.IntN(3)], DestinationNS: nss[r.IntN(2)], DestinationName: svcs[r.IntN(4)]}
		x.SourceName = svcs[r.IntN(4)]
		if x.SourceNS == "*" {
			x.SourceName = "*"
		}
		switch r.IntN(3) {
		case 0:
			x.Action = Allow
		case 1:
			x.Action = Deny
		default:
			x.Permissions = []*Permission{{Action: Allow, HTTP: &HTTPPermission{PathPrefix: "/"}}}
		}
		x.SetDefaults()
		out = append(out, x)
	}
	return out
}

// TestTableEquivalence: the precomputed table gives exactly Authorize's answer for every
// source, over many random intention sets.
func TestTableEquivalence(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	sources := []spiffe.ServiceID{}
	for _, ns := range []string{"default", "ops", "other"} {
		for _, n := range []string{"web", "db", "api", "zzz"} {
			sources = append(sources, svc(ns, n))
		}
	}
	for i := range 500 {
		list := randomList(r, r.IntN(8))
		for _, dst := range []string{"db", "web", "ops/db", "zzz"} {
			def := Default(r.IntN(3))
			table, err := NewTable(list, dst, def)
			if err != nil {
				t.Fatal(err)
			}
			for _, src := range sources {
				a, reason, err := Authorize(list, src, dst, def)
				if err != nil {
					t.Fatal(err)
				}
				if a2, r2 := table.Authorize(src); a2 != a || r2 != reason {
					t.Fatalf("set %d, %v → %s: table (%v, %q), Authorize (%v, %q)\nintentions: %v", i, src, dst, a2, r2, a, reason, names(list))
				}
			}
		}
	}
}

func FuzzTableEquivalence(f *testing.F) {
	f.Add(uint64(1), uint64(2), uint8(5))
	f.Add(uint64(7), uint64(0), uint8(12))
	f.Fuzz(func(t *testing.T, s1, s2 uint64, n uint8) {
		r := rand.New(rand.NewPCG(s1, s2))
		list := randomList(r, int(n%16))
		table, err := NewTable(list, "db", DefaultDeny)
		if err != nil {
			t.Fatal(err)
		}
		for _, ns := range []string{"default", "ops", "x"} {
			for _, name := range []string{"web", "db", "api", "y"} {
				src := svc(ns, name)
				a, reason, _ := Authorize(list, src, "db", DefaultDeny)
				if a2, r2 := table.Authorize(src); a2 != a || r2 != reason {
					t.Fatalf("%v: table (%v, %q), Authorize (%v, %q)", src, a2, r2, a, reason)
				}
			}
		}
	})
}

func TestTableAuthorizeDoesNotAllocate(t *testing.T) {
	list := append(consulList(), ixn("ops/*", "db", Allow), ixn("*/*", "db", Deny))
	table, err := NewTable(list, "db", DefaultDeny)
	if err != nil {
		t.Fatal(err)
	}
	srcs := []spiffe.ServiceID{svc("default", "web"), svc("default", "nobody"), svc("ops", "x"), svc("zz", "y")}
	for _, src := range srcs {
		allocs := testing.AllocsPerRun(200, func() { table.Authorize(src) })
		if allocs != 0 {
			t.Errorf("Authorize(%v) allocates %v times", src, allocs)
		}
	}
}

func BenchmarkTableAuthorize(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	list := randomList(r, 200)
	table, err := NewTable(list, "db", DefaultDeny)
	if err != nil {
		b.Fatal(err)
	}
	src := svc("ops", "unnamed")
	b.ReportAllocs()
	for b.Loop() {
		table.Authorize(src)
	}
}

func BenchmarkAuthorizeList(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	list := randomList(r, 200)
	src := svc("ops", "unnamed")
	b.ReportAllocs()
	for b.Loop() {
		_, _, _ = Authorize(list, src, "db", DefaultDeny)
	}
}

// TestJSONRoundTripWithConsulAPI: a fully populated intention survives ours → consul/api →
// ours, and consul/api's encoding of its own struct decodes into ours.
func TestJSONRoundTripWithConsulAPI(t *testing.T) {
	ts := time.Date(2026, 11, 26, 17, 36, 12, 648542947, time.UTC)
	ours := &Intention{
		ID: "f9a057f7-009c-335f-8c7e-8e9475985603", Description: "d",
		SourceNS: "default", SourceName: "web", DestinationNS: "default", DestinationName: "db",
		SourcePartition: "default", DestinationPartition: "default", SourcePeer: "p", SourceSamenessGroup: "g",
		SourceType: SourceConsul,
		Permissions: []*Permission{{
			Action: Allow,
			HTTP: &HTTPPermission{PathPrefix: "/a", Methods: []string{"GET", "PUT"},
				Header: []HTTPHeaderPermission{{Name: "x", Exact: "1", Invert: true, IgnoreCase: true}, {Name: "y", Present: true}}},
			JWT: &JWTRequirement{Providers: []*JWTProvider{{Name: "okta", VerifyClaims: []*JWTClaimVerification{{Path: []string{"perms", "role"}, Value: "admin"}}}}},
		}},
		Meta:       map[string]string{"k": "v"},
		Precedence: 9, CreatedAt: ts, UpdatedAt: ts.Add(time.Second), Hash: []byte{1, 2, 3},
		CreateIndex: 5, ModifyIndex: 6,
	}
	b, err := json.Marshal(ours)
	if err != nil {
		t.Fatal(err)
	}
	var theirs api.Intention
	if err := json.Unmarshal(b, &theirs); err != nil {
		t.Fatalf("consul/api cannot decode: %v", err)
	}
	if theirs.SourceName != "web" || theirs.Permissions[0].HTTP.Header[0].IgnoreCase != true ||
		theirs.Permissions[0].JWT.Providers[0].VerifyClaims[0].Value != "admin" || !theirs.CreatedAt.Equal(ts) ||
		theirs.SourcePeer != "p" || string(theirs.Hash) != "\x01\x02\x03" || theirs.ModifyIndex != 6 {
		t.Fatalf("consul/api decoded %+v", theirs)
	}
	b2, err := json.Marshal(&theirs)
	if err != nil {
		t.Fatal(err)
	}
	var back Intention
	if err := json.Unmarshal(b2, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, ours) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", back, *ours)
	}
	// Every key consul/api sends is one we know (nothing silently dropped), apart from the
	// deprecated, unused DefaultAddr/DefaultPort.
	var keys map[string]json.RawMessage
	full := api.Intention{DefaultAddr: "x", DefaultPort: 1, Action: "allow", Description: "d", ID: "i", Meta: map[string]string{"a": "b"},
		SourcePartition: "p", DestinationPartition: "p", SourcePeer: "p", SourceSamenessGroup: "g",
		Permissions: []*api.IntentionPermission{{Action: "allow"}}, Hash: []byte{1}}
	b3, _ := json.Marshal(&full)
	if err := json.Unmarshal(b3, &keys); err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	rt := reflect.TypeOf(Intention{})
	for i := range rt.NumField() {
		known[rt.Field(i).Name] = true
	}
	for k := range keys {
		if !known[k] && k != "DefaultAddr" && k != "DefaultPort" {
			t.Errorf("consul/api sends %q, which Intention drops", k)
		}
	}
}

// TestDecodeConsulMatchResponse decodes a body a Consul v1.14.0 dev agent returned for
// GET /v1/connect/intentions/match?by=destination&name=zz (a legacy intention with an ID).
func TestDecodeConsulMatchResponse(t *testing.T) {
	body := `{"zz":[{"CreatedAt":"2026-11-26T17:36:12.648542947Z","UpdatedAt":"2026-11-26T17:36:12.648542947Z",
	"ID":"f9a057f7-009c-335f-8c7e-8e9475985603","SourceNS":"default","SourceName":"legacy","DestinationNS":"default",
	"DestinationName":"zz","SourceType":"consul","Action":"deny","Precedence":9,
	"Hash":"Bcinb/IaLiPBhwbIOu4/937GU9rkmmG2ijNzCk1cs9A=","CreateIndex":32,"ModifyIndex":32}]}`
	var m map[string][]*Intention
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatal(err)
	}
	x := m["zz"][0]
	if x.ID == "" || x.Action != Deny || x.Precedence != 9 || len(x.Hash) != 32 || x.CreatedAt.IsZero() || x.ModifyIndex != 32 {
		t.Fatalf("decoded %+v", x)
	}
	if err := x.Validate(); err != nil {
		t.Fatalf("Consul's intention does not validate: %v", err)
	}
	// Our encoding omits zero timestamps, as Consul does for config-entry intentions.
	y := ixn("web", "db", Allow)
	b, _ := json.Marshal(y)
	if strings.Contains(string(b), "CreatedAt") {
		t.Errorf("zero CreatedAt encoded: %s", b)
	}
}

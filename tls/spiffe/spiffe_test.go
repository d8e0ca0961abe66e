package spiffe

import (
	"net/url"
	"strings"
	"testing"
)

const td = "11111111-2222-3333-4444-555555555555.consul"

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    ServiceID
		wantErr string // substring naming the bad part; "" means success
	}{
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/web",
			want: ServiceID{TrustDomain: td, Namespace: "default", Datacenter: "dc1", Service: "web"}},
		{in: "spiffe://" + td + "/ap/default/ns/default/dc/dc1/svc/web",
			want: ServiceID{TrustDomain: td, Namespace: "default", Datacenter: "dc1", Service: "web"}},
		{in: "spiffe://" + td + "/ap/team-a/ns/billing/dc/eu_1/svc/Pay.v2",
			want: ServiceID{TrustDomain: td, Partition: "team-a", Namespace: "billing", Datacenter: "eu_1", Service: "Pay.v2"}},
		{in: "spiffe://a/ns/n/dc/d/svc/s",
			want: ServiceID{TrustDomain: "a", Namespace: "n", Datacenter: "d", Service: "s"}},

		{in: "", wantErr: "scheme"},
		{in: "https://" + td + "/ns/default/dc/dc1/svc/web", wantErr: "scheme"},
		{in: "SPIFFE://" + td + "/ns/default/dc/dc1/svc/web", wantErr: "scheme"},
		{in: "spiffe:///ns/default/dc/dc1/svc/web", wantErr: "trust domain is empty"},
		{in: "spiffe://ABC.consul/ns/default/dc/dc1/svc/web", wantErr: "upper-case"},
		{in: "spiffe://td:8080/ns/default/dc/dc1/svc/web", wantErr: "port"},
		{in: "spiffe://u@td/ns/default/dc/dc1/svc/web", wantErr: "user info"},
		{in: "spiffe://t d/ns/default/dc/dc1/svc/web", wantErr: "trust domain \"t d\""},
		{in: "spiffe://" + td, wantErr: "signing ID"},
		{in: "spiffe://" + td + "/", wantErr: "trailing slash"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/web?x=1", wantErr: "query or fragment"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/web#f", wantErr: "query or fragment"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/", wantErr: "service is empty"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc", wantErr: "service is missing"},
		{in: "spiffe://" + td + "/ns/default/dc//svc/web", wantErr: "datacenter is empty"},
		{in: "spiffe://" + td + "/ns//dc/dc1/svc/web", wantErr: "namespace is empty"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/web/extra", wantErr: "unexpected \"/extra\""},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/web/", wantErr: "unexpected \"/\""},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/w%65b", wantErr: "percent-encoding"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/w*b", wantErr: "service \"w*b\": invalid character"},
		{in: "spiffe://" + td + "/ns/../dc/dc1/svc/web", wantErr: "dot segments"},
		{in: "spiffe://" + td + "/agent/client/dc/dc1/id/x", wantErr: "expected segment \"ns\""},
		{in: "spiffe://" + td + "/dc/dc1/ns/default/svc/web", wantErr: "expected segment \"ns\""},
		{in: "spiffe://" + td + "/ap//ns/default/dc/dc1/svc/web", wantErr: "partition is empty"},
		{in: "spiffe://" + td + "/ap/p", wantErr: "expected segment \"ns\""},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/" + strings.Repeat("a", MaxLength), wantErr: "longer than"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse(%q) = %+v, want error containing %q", tc.in, got, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) error %q does not contain %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
			if err := got.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			// FromURI, as used on a certificate's URI SAN, agrees with Parse.
			u, err := url.Parse(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got2, err := FromURI(u); err != nil || got2 != got {
				t.Fatalf("FromURI = %+v, %v; want %+v", got2, err, got)
			}
		})
	}
}

func TestFromURIRejectsWhatParseRejects(t *testing.T) {
	for _, s := range []string{
		"spiffe://" + td + "/ns/default/dc/dc1/svc/w%65b",
		"spiffe://" + td + "/ns/default/dc/dc1/svc/web?q",
		"spiffe://" + td + "/ns/default/dc/dc1/svc/web#f",
		"spiffe://TD/ns/default/dc/dc1/svc/web",
		"spiffe://td:1/ns/default/dc/dc1/svc/web",
		"spiffe://u@td/ns/default/dc/dc1/svc/web",
		"spiffe://" + td,
		"spiffe:opaque",
		"http://" + td + "/ns/default/dc/dc1/svc/web",
	} {
		u, err := url.Parse(s)
		if err != nil {
			continue
		}
		if id, err := FromURI(u); err == nil {
			t.Errorf("FromURI(%q) = %+v, want error", s, id)
		}
	}
	if _, err := FromURI(nil); err == nil {
		t.Error("FromURI(nil) succeeded")
	}
}

func TestString(t *testing.T) {
	tests := []struct {
		id   ServiceID
		want string
	}{
		{ServiceID{TrustDomain: td, Namespace: "default", Datacenter: "dc1", Service: "web"},
			"spiffe://" + td + "/ns/default/dc/dc1/svc/web"},
		{ServiceID{TrustDomain: td, Datacenter: "dc1", Service: "web"}, // empty ns means default
			"spiffe://" + td + "/ns/default/dc/dc1/svc/web"},
		{ServiceID{TrustDomain: td, Partition: "default", Namespace: "default", Datacenter: "dc1", Service: "web"},
			"spiffe://" + td + "/ns/default/dc/dc1/svc/web"},
		{ServiceID{TrustDomain: td, Partition: "p", Namespace: "n", Datacenter: "dc1", Service: "web"},
			"spiffe://" + td + "/ap/p/ns/n/dc/dc1/svc/web"},
	}
	for _, tc := range tests {
		if got := tc.id.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.id, got, tc.want)
		}
		if got := tc.id.URI().String(); got != tc.want {
			t.Errorf("%+v.URI() = %q, want %q", tc.id, got, tc.want)
		}
	}
}

func TestSigning(t *testing.T) {
	id, err := ParseSigning("spiffe://" + td)
	if err != nil {
		t.Fatal(err)
	}
	if id.TrustDomain != td || id.String() != "spiffe://"+td || id.URI().String() != "spiffe://"+td {
		t.Fatalf("signing ID %+v: String %q URI %q", id, id.String(), id.URI())
	}
	for _, bad := range []string{"spiffe://" + td + "/ns/default/dc/dc1/svc/web", "spiffe://", "spiffe://X.consul", "x"} {
		if _, err := ParseSigning(bad); err == nil {
			t.Errorf("ParseSigning(%q) succeeded", bad)
		}
	}
	svc := ServiceID{TrustDomain: td, Namespace: "default", Datacenter: "dc1", Service: "web"}
	if !id.CanSign(svc) {
		t.Error("CanSign(same trust domain) = false")
	}
	other := svc
	other.TrustDomain = "99999999-2222-3333-4444-555555555555.consul"
	if id.CanSign(other) {
		t.Error("CanSign(other trust domain) = true")
	}
	if (SigningID{}).CanSign(ServiceID{}) {
		t.Error("empty signing ID can sign")
	}
}

func TestTrustDomainFromClusterID(t *testing.T) {
	got, err := TrustDomainFromClusterID("7F42F496-FBC7-8692-05ED-334AA5340C1E")
	if err != nil {
		t.Fatal(err)
	}
	if want := "7f42f496-fbc7-8692-05ed-334aa5340c1e.consul"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	for _, bad := range []string{"", "a/b", "a b", "x:1"} {
		if td, err := TrustDomainFromClusterID(bad); err == nil {
			t.Errorf("TrustDomainFromClusterID(%q) = %q, want error", bad, td)
		}
	}
}

func TestValidateNamesThePart(t *testing.T) {
	base := ServiceID{TrustDomain: td, Namespace: "default", Datacenter: "dc1", Service: "web"}
	tests := []struct {
		mut  func(*ServiceID)
		want string
	}{
		{func(id *ServiceID) { id.TrustDomain = "" }, "trust domain"},
		{func(id *ServiceID) { id.Partition = "a/b" }, "partition"},
		{func(id *ServiceID) { id.Namespace = "" }, "namespace"},
		{func(id *ServiceID) { id.Datacenter = "d c" }, "datacenter"},
		{func(id *ServiceID) { id.Service = "" }, "service"},
	}
	for _, tc := range tests {
		id := base
		tc.mut(&id)
		err := id.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want error naming %q", id, err, tc.want)
		}
	}
	if err := base.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseDoesNotAllocate(t *testing.T) {
	s := "spiffe://" + td + "/ns/default/dc/dc1/svc/web"
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := Parse(s); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Parse allocates %v times per call, want 0", allocs)
	}
}

func BenchmarkParse(b *testing.B) {
	s := "spiffe://" + td + "/ns/default/dc/dc1/svc/web"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(s); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"spiffe://" + td + "/ns/default/dc/dc1/svc/web",
		"spiffe://" + td + "/ap/p/ns/n/dc/d/svc/s",
		"spiffe://" + td + "/ap/default/ns/n/dc/d/svc/s",
		"spiffe://" + td,
		"spiffe://a/ns/%41/dc/d/svc/s",
		"spiffe://a/ns/n/dc/d/svc/s?x#y",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("Parse(%q) returned an invalid ID %+v: %v", s, id, err)
		}
		// The canonical form parses back to the same ID, and is the input unless the input
		// spelled out the default partition.
		c := id.String()
		id2, err := Parse(c)
		if err != nil || id2 != id {
			t.Fatalf("Parse(String()) = %+v, %v; want %+v (input %q, canonical %q)", id2, err, id, s, c)
		}
		if c != s && !strings.Contains(s, "/ap/default/") {
			t.Fatalf("canonical %q differs from input %q", c, s)
		}
		// The URI form that crypto/x509 produces agrees.
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("url.Parse(%q) failed on an accepted ID: %v", s, err)
		}
		if id3, err := FromURI(u); err != nil || id3 != id {
			t.Fatalf("FromURI(%q) = %+v, %v; want %+v", s, id3, err, id)
		}
	})
}

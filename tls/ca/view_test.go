package ca

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/hashicorp/consul/api"
)

// consulRootKeys and consulLeafKeys are the JSON keys a Consul v1.14.0 dev agent sends for a
// root and a leaf (captured from /v1/agent/connect/ca/roots and /leaf/web), in order; the
// leaf's Namespace is from the Consul API documentation's sample.
var (
	consulRootKeys = []string{"ID", "Name", "SerialNumber", "SigningKeyID", "ExternalTrustDomain", "NotBefore", "NotAfter",
		"RootCert", "IntermediateCerts", "Active", "PrivateKeyType", "PrivateKeyBits", "CreateIndex", "ModifyIndex"}
	consulLeafKeys = []string{"SerialNumber", "CertPEM", "PrivateKeyPEM", "Service", "ServiceURI", "ValidAfter", "ValidBefore",
		"Namespace", "CreateIndex", "ModifyIndex"}
)

// keysInOrder returns the top-level keys of a JSON object in document order.
func keysInOrder(t *testing.T, b []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %v %v", tok, err)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func TestRootListJSONMatchesConsulAPI(t *testing.T) {
	c := newCA(t, Config{})
	if _, err := c.Rotate(); err != nil {
		t.Fatal(err)
	}
	ours := c.Roots()
	b, err := json.Marshal(ours)
	if err != nil {
		t.Fatal(err)
	}
	var theirs api.CARootList
	if err := json.Unmarshal(b, &theirs); err != nil {
		t.Fatalf("consul/api cannot decode our roots: %v", err)
	}
	if theirs.ActiveRootID != ours.ActiveRootID || theirs.TrustDomain != ours.TrustDomain || len(theirs.Roots) != len(ours.Roots) {
		t.Fatalf("list: %+v vs %+v", theirs, ours)
	}
	for i, r := range ours.Roots {
		a := theirs.Roots[i]
		if a.ID != r.ID || a.Name != r.Name || a.RootCertPEM != r.RootCert || a.Active != r.Active ||
			a.NotBefore == nil || !a.NotBefore.Equal(r.NotBefore) || a.NotAfter == nil || !a.NotAfter.Equal(r.NotAfter) {
			t.Errorf("root %d: consul/api sees %+v, we sent %+v", i, a, r)
		}
	}
	var raw struct{ Roots []json.RawMessage }
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if got := keysInOrder(t, raw.Roots[0]); !reflect.DeepEqual(got, consulRootKeys) {
		t.Errorf("root keys %v, Consul sends %v", got, consulRootKeys)
	}
	if got := keysInOrder(t, b); !reflect.DeepEqual(got, []string{"ActiveRootID", "TrustDomain", "Roots"}) {
		t.Errorf("list keys %v", got)
	}
	// A root without intermediates sends null, as Consul does.
	var first map[string]any
	if err := json.Unmarshal(raw.Roots[0], &first); err != nil {
		t.Fatal(err)
	}
	if v, ok := first["IntermediateCerts"]; !ok || v != nil {
		t.Errorf("IntermediateCerts of the first root = %v, want null", v)
	}
}

func TestLeafCertJSONMatchesConsulAPI(t *testing.T) {
	c := newCA(t, Config{})
	ours, err := c.IssueLeaf(c.ServiceID("dc1", "web"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(ours)
	if err != nil {
		t.Fatal(err)
	}
	var theirs api.LeafCert
	if err := json.Unmarshal(b, &theirs); err != nil {
		t.Fatalf("consul/api cannot decode our leaf: %v", err)
	}
	want := api.LeafCert{
		SerialNumber:  ours.SerialNumber,
		CertPEM:       ours.CertPEM,
		PrivateKeyPEM: ours.PrivateKeyPEM,
		Service:       "web",
		ServiceURI:    ours.ServiceURI,
		ValidAfter:    ours.ValidAfter,
		ValidBefore:   ours.ValidBefore,
	}
	if !reflect.DeepEqual(theirs, want) {
		t.Errorf("consul/api sees %+v, want %+v", theirs, want)
	}
	if got := keysInOrder(t, b); !reflect.DeepEqual(got, consulLeafKeys) {
		t.Errorf("leaf keys %v, want %v", got, consulLeafKeys)
	}
	// Back from consul/api's encoding to ours loses nothing consul/api knows about.
	b2, _ := json.Marshal(theirs)
	var back LeafCert
	if err := json.Unmarshal(b2, &back); err != nil {
		t.Fatal(err)
	}
	back.Namespace, back.RootID, back.IssuedAt = ours.Namespace, ours.RootID, ours.IssuedAt
	if !reflect.DeepEqual(&back, ours) {
		t.Errorf("round trip %+v, want %+v", back, *ours)
	}
}

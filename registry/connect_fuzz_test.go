package registry

import (
	"strings"
	"testing"
	"time"

	"github.com/podmesh/podmesh/tls/authz"
	"github.com/podmesh/podmesh/tls/ca"
)

// The Connect request decoders, fed arbitrary bytes: they must not panic, must fail only with
// a *RequestError, and what they accept must be what the store and the CA rely on.

func FuzzDecodeIntention(f *testing.F) {
	for _, s := range []string{
		`{"SourceName":"web","DestinationName":"db","Action":"allow","Description":"d","Meta":{"k":"v"}}`,
		`{"SourceName":"*","DestinationName":"db","Action":"deny","SourceType":"consul","Precedence":0,"CreatedAt":"0001-01-01T00:00:00Z"}`,
		`{"source_name":"a","destination_name":"*","action":"allow"}`,
		`{"SourceName":"web","DestinationName":"db","Permissions":[{"Action":"allow","HTTP":{"PathPrefix":"/a","Methods":["GET"],"Header":[{"Name":"x","Exact":"y"}]}}]}`,
		`{"SourceNS":"*","SourceName":"*","DestinationName":"db","Action":"allow"}`,
		`{"SourceName":"we*b","DestinationName":"db","Action":"allow"}`, `{}`, `[]`, `null`, `{"Action":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		x, err := decodeIntention(body)
		if err == nil {
			err = checkIntention(x)
		}
		if err != nil {
			if _, ok := err.(*RequestError); !ok {
				t.Fatalf("error %T %v, want *RequestError", err, err)
			}
			return
		}
		if err := x.Validate(); err != nil {
			t.Fatalf("accepted an invalid intention %+v: %v", x, err)
		}
		if x.SourceNS != authz.DefaultNamespace || x.DestinationNS != authz.DefaultNamespace || x.SourceType != authz.SourceConsul ||
			x.Precedence < 1 || x.Precedence > 9 {
			t.Fatalf("accepted %+v", x)
		}
	})
}

func FuzzDecodeCAConfig(f *testing.F) {
	key := "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIDYcWuEhC7rHzMbDj6+nIAVNTqwHIGG7YQuSQEibBKHMoAoGCCqGSM49\nAwEHoUQDQgAEGfZGybCOISqk3YFV6Ou0Fdkx+pBZvNFMh4n8xOjwNB8CzjATU1HF\nlwl8RuDVu2y7toDptNRy0FcFCCMrXw3buQ==\n-----END EC PRIVATE KEY-----\n"
	for _, s := range []string{
		`{"Provider":"consul","Config":{"LeafCertTTL":"5s","RotationPeriod":"1h","IntermediateCertTTL":"8760h","PrivateKeyType":"ec","PrivateKeyBits":256}}`,
		`{"Provider":"consul","Config":{"PrivateKey":` + strings.ReplaceAll(`"`+key+`"`, "\n", `\n`) + `}}`,
		`{"provider":"consul","config":{"leaf_cert_ttl":"1h","root_cert_ttl":"87600h"},"force_without_cross_signing":true}`,
		`{"Provider":"consul","Config":{"LeafCertTTL":3600000000000}}`,
		`{"Provider":"consul"}`, `{"Provider":"vault"}`, `{"Provider":"consul","Config":{"RootCert":"x"}}`, `{}`, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		u, err := decodeCAConfig(body, time.Hour)
		if err != nil {
			if _, ok := err.(*RequestError); !ok {
				t.Fatalf("error %T %v, want *RequestError", err, err)
			}
			return
		}
		if err := u.Config.Validate(); err != nil {
			t.Fatalf("accepted an invalid configuration %+v: %v", u.Config, err)
		}
		if (u.PrivateKey == "") != (u.Key == nil) {
			t.Fatalf("PrivateKey %q with parsed key %v", u.PrivateKey, u.Key)
		}
		if d := u.Config.RotationPeriod; d != 0 && d < time.Second || cmpOr(d, ca.DefaultRotationPeriod) < cmpOr(u.Config.LeafCertTTL, ca.DefaultLeafCertTTL) {
			t.Fatalf("accepted RotationPeriod %v with LeafCertTTL %v", d, u.Config.LeafCertTTL)
		}
		if d := u.Config.LeafCertTTL; d != 0 && d < ca.MinLeafCertTTL {
			t.Fatalf("accepted LeafCertTTL %v", d)
		}
	})
}

func FuzzDecodeAuthorize(f *testing.F) {
	for _, s := range []string{
		`{"Target":"db","ClientCertURI":"spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web","ClientCertSerial":"04"}`,
		`{"Target":"db","ClientCertURI":"spiffe://x.consul/ap/p/ns/default/dc/dc1/svc/web"}`,
		`{"Target":"db","ClientCertURI":"spiffe://x.consul"}`, `{"Target":"db","ClientCertURI":"spiffe://x.consul/agent/client/dc/dc1/id/a"}`,
		`{"Target":""}`, `{}`, `garbage`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, id, err := decodeAuthorize(body)
		if err != nil {
			if _, ok := err.(*RequestError); !ok {
				t.Fatalf("error %T %v, want *RequestError", err, err)
			}
			return
		}
		if req.Target == "" {
			t.Fatal("accepted an empty Target")
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("accepted identity %+v: %v", id, err)
		}
	})
}

package registry

import (
	"net/url"
	"strings"
	"testing"
)

// The fuzz targets feed arbitrary bytes to each request decoder. Besides not panicking, a
// decoder that accepts its input must produce what the store relies on.

func FuzzDecodeServiceRegistration(f *testing.F) {
	for _, s := range []string{
		`{"Name":"web","ID":"web1","Port":8080,"Tags":["a"],"Meta":{"k":"v"},"Check":{"TTL":"10s"}}`,
		`{"Name":"web","Checks":[{"HTTP":"http://127.0.0.1:1/h","Interval":"1s","Header":{"X":["y"]}},{"TCP":"127.0.0.1:1","Interval":1000000000}]}`,
		`{"name":"snake","check":{"ttl":"1s","deregister_critical_service_after":"1m"}}`,
		`{"Name":"x","Weights":{"Passing":2,"Warning":1},"TaggedAddresses":{"lan":{"Address":"1.2.3.4","Port":80}}}`,
		`{"Name":"x","Check":{}}`, `{}`, `[]`, `null`, `{"Name":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		svc, checks, err := decodeServiceRegistration(body)
		if err != nil {
			if _, ok := err.(*RequestError); !ok {
				t.Fatalf("error %T %v, want *RequestError", err, err)
			}
			return
		}
		if svc.ID == "" || strings.TrimSpace(svc.Service) == "" || svc.Weights.Passing < 1 || svc.Port < 0 || svc.Port > 65535 {
			t.Fatalf("accepted service %+v", svc)
		}
		for _, c := range checks {
			if c.CheckID == "" || c.Name == "" || !c.Managed {
				t.Fatalf("accepted check %+v", c)
			}
			switch c.Type {
			case "ttl":
				if c.Definition.TTL <= 0 {
					t.Fatalf("TTL check without TTL: %+v", c)
				}
			case "http", "tcp":
				if c.Definition.Interval <= 0 {
					t.Fatalf("%s check without interval: %+v", c.Type, c)
				}
			default:
				t.Fatalf("accepted check kind %q", c.Type)
			}
		}
	})
}

func FuzzDecodeCheckRegistration(f *testing.F) {
	for _, s := range []string{
		`{"ID":"c1","Name":"c","TTL":"5s","Status":"passing"}`,
		`{"Name":"c","ServiceID":"web1","HTTP":"https://127.0.0.1/","Interval":"2s","TLSSkipVerify":true,"Method":"POST","Body":"x"}`,
		`{"Name":"c","TCP":"[::1]:80","Interval":"1s","FailuresBeforeCritical":3,"FailuresBeforeWarning":1}`,
		`{"Name":"c"}`, `{"Name":"c","TTL":"x"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := decodeCheckRegistration(body)
		if err != nil {
			if _, ok := err.(*RequestError); !ok {
				t.Fatalf("error %T %v, want *RequestError", err, err)
			}
			return
		}
		if c.CheckID == "" || strings.TrimSpace(c.Name) == "" || !c.Managed {
			t.Fatalf("accepted check %+v", c)
		}
		if c.Status != "" && c.Status != "passing" && c.Status != "warning" && c.Status != "critical" {
			t.Fatalf("accepted status %q", c.Status)
		}
	})
}

func FuzzDecodeCatalogRegister(f *testing.F) {
	for _, s := range []string{
		`{"ID":"","Node":"n1","Address":"10.0.0.1","Datacenter":"","TaggedAddresses":{"lan":"10.0.0.1"},"NodeMeta":{"rack":"a"},"Service":{"ID":"s1","Service":"s","Tags":["t"],"Port":80,"Weights":{"Passing":0,"Warning":0}},"Check":null,"Checks":null,"SkipNodeUpdate":false}`,
		`{"Node":"n1","Address":"a","Check":{"CheckID":"c","Status":"passing","Definition":{"Interval":"10s"}}}`,
		`{"Node":"n1","Address":"a","Checks":[{"Name":"x","ServiceID":"s1"}]}`,
		`{"Node":""}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		reg, _, err := decodeCatalogRegister(body)
		if err != nil {
			if _, ok := err.(*RequestError); !ok {
				t.Fatalf("error %T %v, want *RequestError", err, err)
			}
			return
		}
		if strings.TrimSpace(reg.Node.Node) == "" || strings.TrimSpace(reg.Node.Address) == "" {
			t.Fatalf("accepted node %+v", reg.Node)
		}
		if reg.Service != nil && (reg.Service.ID == "" || reg.Service.Service == "" || reg.Service.Weights.Passing < 1) {
			t.Fatalf("accepted service %+v", reg.Service)
		}
		for _, c := range reg.Checks {
			if strings.TrimSpace(c.CheckID) == "" || c.Managed {
				t.Fatalf("accepted check %+v", c)
			}
		}
	})
}

func FuzzKVParams(f *testing.F) {
	for _, s := range []string{"flags=3&cas=0", "cas=18446744073709551615", "recurse", "keys&separator=/", "raw", "acquire=x", "flags=-1", "recurse=false&keys=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		if p, err := parseKVPutParams(q); err == nil {
			if _, has := q["cas"]; has != (p.CAS != nil) {
				t.Fatalf("cas presence lost: %q -> %+v", raw, p)
			}
		} else if _, ok := err.(*RequestError); !ok {
			t.Fatalf("put params error %T", err)
		}
		if p, err := parseKVGetParams(q); err == nil {
			if p.Raw && (p.Recurse || p.Keys) {
				t.Fatalf("raw combined with a list: %q", raw)
			}
			if p.Separator != "" && !p.Keys {
				t.Fatalf("separator without keys: %q", raw)
			}
		} else if _, ok := err.(*RequestError); !ok {
			t.Fatalf("get params error %T", err)
		}
		if _, err := parseBlocking(q); err != nil {
			if _, ok := err.(*RequestError); !ok {
				t.Fatalf("blocking params error %T", err)
			}
		}
	})
}

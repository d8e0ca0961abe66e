package registry_test

import (
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/registry/state"
)

// TestBadInput sends malformed, mistyped, empty, oversized and unsupported requests. Each must
// get its status with a message naming the field, and change nothing: any applied write would
// raise the store's index.
func TestBadInput(t *testing.T) {
	r := startRegistry(t, func(o *regOptions) { o.maxBody = 4096; o.maxKV = 1024 })
	must(t, r.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web1", Name: "web", Check: &api.AgentServiceCheck{CheckID: "web1-ttl", TTL: "1m"}}))
	must(t, r.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "plain", Name: "plain", Check: &api.AgentServiceCheck{CheckID: "plain-tcp", TCP: "127.0.0.1:1", Interval: "1m"}}))
	big := `{"Name":"x","Meta":{"k":"` + strings.Repeat("v", 5000) + `"}}`

	cases := []struct {
		name         string
		method, path string
		body         string
		status       int
		field        string // must appear in the message
	}{
		// Service registration.
		{"malformed json", "PUT", "/v1/agent/service/register", `{"Name":`, 400, "body"},
		{"not an object", "PUT", "/v1/agent/service/register", `["web"]`, 400, "body"},
		{"empty body", "PUT", "/v1/agent/service/register", ``, 400, "body"},
		{"trailing data", "PUT", "/v1/agent/service/register", `{"Name":"x"} {}`, 400, "body"},
		{"wrong type", "PUT", "/v1/agent/service/register", `{"Name":"x","Port":"80"}`, 400, "Port"},
		{"wrong nested type", "PUT", "/v1/agent/service/register", `{"Name":"x","Tags":"a"}`, 400, "Tags"},
		{"empty name", "PUT", "/v1/agent/service/register", `{"Name":"  "}`, 400, "Name"},
		{"slash in ID", "PUT", "/v1/agent/service/register", `{"Name":"x","ID":"a/b"}`, 400, "ID"},
		{"port out of range", "PUT", "/v1/agent/service/register", `{"Name":"x","Port":70000}`, 400, "Port"},
		{"zero weight", "PUT", "/v1/agent/service/register", `{"Name":"x","Weights":{"Passing":0,"Warning":1}}`, 400, "Weights.Passing"},
		{"unknown kind of service", "PUT", "/v1/agent/service/register", `{"Name":"x","Kind":"spaceship"}`, 400, "Kind"},
		{"empty meta key", "PUT", "/v1/agent/service/register", `{"Name":"x","Meta":{"":"v"}}`, 400, "Meta"},
		{"bad duration", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"TTL":"10 parsecs"}}`, 400, "Check.TTL"},
		{"duration of wrong type", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"TTL":true}}`, 400, "Check.TTL"},
		{"negative duration", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"TTL":"-5s"}}`, 400, "Check.TTL"},
		{"script check", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"ScriptArgs":["/bin/true"],"Interval":"10s"}}`, 400, "Check.ScriptArgs"},
		{"grpc check", "PUT", "/v1/agent/service/register", `{"Name":"x","Checks":[{"GRPC":"127.0.0.1:1","Interval":"10s"}]}`, 400, "Checks[0].GRPC"},
		{"alias check", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"AliasService":"y"}}`, 400, "AliasNode/AliasService"},
		{"check without kind", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"Interval":"10s"}}`, 400, "no check kind"},
		{"conflicting kinds", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"TTL":"10s","HTTP":"http://127.0.0.1/","Interval":"1s"}}`, 400, "conflicting check kinds TTL and HTTP"},
		{"http without interval", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"HTTP":"http://127.0.0.1/"}}`, 400, "Check.Interval"},
		{"ttl with interval", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"TTL":"10s","Interval":"1s"}}`, 400, "Check.Interval"},
		{"bad http url", "PUT", "/v1/agent/service/register", `{"Name":"x","Checks":[{"HTTP":"ftp://x","Interval":"1s"}]}`, 400, "Checks[0].HTTP"},
		{"bad tcp address", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"TCP":"localhost","Interval":"1s"}}`, 400, "Check.TCP"},
		{"bad method", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"HTTP":"http://a/","Method":"get it","Interval":"1s"}}`, 400, "Check.Method"},
		{"bad status", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"TTL":"1s","Status":"fine"}}`, 400, "Check.Status"},
		{"negative threshold", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"TTL":"1s","SuccessBeforePassing":-1}}`, 400, "SuccessBeforePassing"},
		{"warning above critical", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"TTL":"1s","FailuresBeforeWarning":3,"FailuresBeforeCritical":2}}`, 400, "FailuresBeforeWarning"},
		{"second check invalid", "PUT", "/v1/agent/service/register", `{"Name":"newsvc","Checks":[{"TTL":"10s"},{"TTL":"soon"}]}`, 400, "Checks[1].TTL"},
		{"duplicate check IDs", "PUT", "/v1/agent/service/register", `{"Name":"x","Checks":[{"CheckID":"c","TTL":"10s"},{"CheckID":"c","TTL":"10s"}]}`, 400, "Checks[1].CheckID"},
		{"reserved check ID", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"CheckID":"serfHealth","TTL":"10s"}}`, 400, "CheckID"},
		{"bad replace flag", "PUT", "/v1/agent/service/register?replace-existing-checks=maybe", `{"Name":"x"}`, 400, "replace-existing-checks"},
		{"oversized body", "PUT", "/v1/agent/service/register", big, 413, "body"},
		// Check registration and TTL updates.
		{"check without name", "PUT", "/v1/agent/check/register", `{"TTL":"10s"}`, 400, "Name"},
		{"check for unknown service", "PUT", "/v1/agent/check/register", `{"Name":"c","TTL":"10s","ServiceID":"ghost"}`, 400, "ServiceID"},
		{"check bad interval", "PUT", "/v1/agent/check/register", `{"Name":"c","TCP":"127.0.0.1:1","Interval":"often"}`, 400, "check.Interval"},
		{"ttl update bad status", "PUT", "/v1/agent/check/update/web1-ttl", `{"Status":"meh"}`, 400, "Status"},
		{"ttl update malformed", "PUT", "/v1/agent/check/update/web1-ttl", `{"Status":`, 400, "body"},
		{"ttl pass on tcp check", "PUT", "/v1/agent/check/pass/plain-tcp", ``, 400, "not a TTL check"},
		{"ttl pass on unknown check", "PUT", "/v1/agent/check/pass/ghost", ``, 404, "ghost"},
		{"deregister unknown service", "PUT", "/v1/agent/service/deregister/ghost", ``, 404, "ghost"},
		{"maintenance without enable", "PUT", "/v1/agent/service/maintenance/web1", ``, 400, "enable"},
		{"maintenance bad enable", "PUT", "/v1/agent/maintenance?enable=perhaps", ``, 400, "enable"},
		// Catalog.
		{"catalog missing node", "PUT", "/v1/catalog/register", `{"Address":"10.0.0.1"}`, 400, "Node"},
		{"catalog missing address", "PUT", "/v1/catalog/register", `{"Node":"n"}`, 400, "Address"},
		{"catalog service without name", "PUT", "/v1/catalog/register", `{"Node":"n","Address":"a","Service":{"ID":"s"}}`, 400, "Service.Service"},
		{"catalog check without id", "PUT", "/v1/catalog/register", `{"Node":"n","Address":"a","Checks":[{"Status":"passing"}]}`, 400, "Checks[0].CheckID"},
		{"catalog check bad status", "PUT", "/v1/catalog/register", `{"Node":"n","Address":"a","Check":{"CheckID":"c","Status":"ok"}}`, 400, "Check.Status"},
		{"catalog check unknown service", "PUT", "/v1/catalog/register", `{"Node":"n","Address":"a","Service":{"Service":"s"},"Checks":[{"CheckID":"c","ServiceID":"other"}]}`, 400, "Checks[0].ServiceID"},
		{"catalog check other node", "PUT", "/v1/catalog/register", `{"Node":"n","Address":"a","Checks":[{"Node":"m","CheckID":"c"}]}`, 400, "Checks[0].Node"},
		{"catalog bad definition", "PUT", "/v1/catalog/register", `{"Node":"n","Address":"a","Check":{"CheckID":"c","Definition":{"Interval":"x"}}}`, 400, "Check.Definition.Interval"},
		{"catalog checks wrong type", "PUT", "/v1/catalog/register", `{"Node":"n","Address":"a","Checks":{}}`, 400, "Checks"},
		{"catalog other dc", "PUT", "/v1/catalog/register", `{"Node":"n","Address":"a","Datacenter":"dc9"}`, 500, "Datacenter"},
		{"catalog serfHealth", "PUT", "/v1/catalog/register", `{"Node":"node1","Address":"127.0.0.1","Check":{"CheckID":"serfHealth","Status":"critical"}}`, 400, "Check.CheckID"},
		{"deregister without node", "PUT", "/v1/catalog/deregister", `{"ServiceID":"x"}`, 400, "Node"},
		{"deregister own node", "PUT", "/v1/catalog/deregister", `{"Node":"node1"}`, 400, "Node"},
		// KV.
		{"kv bad flags", "PUT", "/v1/kv/k?flags=-1", "v", 400, "flags"},
		{"kv bad cas", "PUT", "/v1/kv/k?cas=abc", "v", 400, "cas"},
		{"kv sessions", "PUT", "/v1/kv/k?acquire=abc", "v", 400, "acquire"},
		{"kv oversized value", "PUT", "/v1/kv/k", strings.Repeat("v", 2000), 413, "body"},
		{"kv put without key", "PUT", "/v1/kv/", "v", 400, "key"},
		{"kv delete without key", "DELETE", "/v1/kv/", "", 400, "key"},
		{"kv delete bad cas", "DELETE", "/v1/kv/k?cas=x", "", 400, "cas"},
		{"kv delete recurse with cas", "DELETE", "/v1/kv/k?recurse&cas=1", "", 400, "cas"},
		{"kv raw with recurse", "GET", "/v1/kv/k?raw&recurse", "", 400, "raw"},
		{"kv separator without keys", "GET", "/v1/kv/k?separator=/", "", 400, "separator"},
		{"kv get without key", "GET", "/v1/kv/", "", 400, "key"},
		// Queries.
		{"bad index", "GET", "/v1/health/service/web?index=abc", "", 400, "index"},
		{"bad wait", "GET", "/v1/health/service/web?index=1&wait=forever", "", 400, "wait"},
		{"bad passing", "GET", "/v1/health/service/web?passing=maybe", "", 400, "passing"},
		{"filter syntax", "GET", "/v1/health/service/web?filter=Service.Tags+contains", "", 400, "end of input"},
		{"filter bad token", "GET", "/v1/health/service/web?filter=Service.Port+%3D%3D+%3D%3D", "", 400, `"=="`},
		{"filter unknown selector", "GET", "/v1/catalog/services?filter=Bogus+%3D%3D+1", "", 400, "Bogus"},
		{"filter wrong selector for endpoint", "GET", "/v1/catalog/service/web?filter=Service.Tags+contains+%22a%22", "", 400, "Service"},
		{"bad health state", "GET", "/v1/health/state/sad", "", 400, "state"},
		{"namespace", "GET", "/v1/catalog/services?ns=team", "", 400, "ns"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var before uint64
			r.Store.View(func(v *state.View) { before = v.Index() })
			code, _, body := r.do(t, tc.method, tc.path, tc.body)
			if code != tc.status {
				t.Fatalf("status %d (%q), want %d", code, body, tc.status)
			}
			if !strings.Contains(body, tc.field) {
				t.Fatalf("message %q does not name %q", body, tc.field)
			}
			var after uint64
			r.Store.View(func(v *state.View) { after = v.Index() })
			if after != before {
				t.Fatalf("rejected request changed the store: index %d -> %d", before, after)
			}
		})
	}
	// The half-valid registration left no trace.
	svcs, err := r.Client.Agent().Services()
	must(t, err)
	if _, ok := svcs["newsvc"]; ok {
		t.Fatal("service of a rejected registration was stored")
	}
}

// TestSnakeCaseAccepted: Consul accepts snake_case keys in registrations; user-keyed maps
// (Meta) keep their keys as sent.
func TestSnakeCaseAccepted(t *testing.T) {
	r := startRegistry(t)
	code, _, body := r.do(t, "PUT", "/v1/agent/service/register",
		`{"name":"snake","id":"snake1","port":81,"meta":{"my_key":"v"},"check":{"check_id":"snake-ttl","ttl":"10s","deregister_critical_service_after":"2m"}}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	svcs, err := r.Client.Agent().Services()
	must(t, err)
	s := svcs["snake1"]
	if s == nil || s.Port != 81 || s.Meta["my_key"] != "v" {
		t.Fatalf("service = %+v", s)
	}
	cs, err := r.Client.Agent().Checks()
	must(t, err)
	if c := cs["snake-ttl"]; c == nil || c.Definition.DeregisterCriticalServiceAfterDuration.Minutes() != 2 {
		t.Fatalf("check = %+v", c)
	}
}

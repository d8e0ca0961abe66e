package registry_test

import (
	"encoding/json"
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
		{"duplicate of Check in Checks", "PUT", "/v1/agent/service/register", `{"Name":"x","Check":{"CheckID":"dup","TTL":"10s"},"Checks":[{"CheckID":"dup","TTL":"10s"}]}`, 400, "Checks[0].CheckID"},
		{"reserved ID after an empty check", "PUT", "/v1/agent/service/register", `{"Name":"x","Checks":[{},{"TTL":"10s","CheckID":"serfHealth"}]}`, 400, "Checks[1].CheckID"},
		{"NUL in an ID after an empty check", "PUT", "/v1/agent/service/register", `{"Name":"x","Checks":[{},{"TTL":"10s","CheckID":"c\u0000"}]}`, 400, "Checks[1].CheckID"},
		{"control character in service name", "PUT", "/v1/agent/service/register", `{"Name":"a\u0001b"}`, 400, "Name"},
		{"NUL in service ID", "PUT", "/v1/agent/service/register", `{"Name":"x","ID":"x\u0000"}`, 400, "ID"},
		{"control character in check name", "PUT", "/v1/agent/check/register", `{"ID":"c","Name":"c\u007f","TTL":"10s"}`, 400, "Name"},
		{"keys differing in case", "PUT", "/v1/agent/service/register", `{"Name":"web","name":"other"}`, 400, `"Name" and "name"`},
		{"keys differing in underscores", "PUT", "/v1/agent/service/register", `{"Name":"web","Check":{"TTL":"10s","DeregisterCriticalServiceAfter":"1m","deregister_critical_service_after":"2m"}}`, 400, "Check"},
		{"catalog keys differing in case", "PUT", "/v1/catalog/register", `{"Node":"n","node":"m","Address":"10.0.0.1"}`, 400, `"Node" and "node"`},
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
		{"catalog NUL in node", "PUT", "/v1/catalog/register", `{"Node":"a\u0000b","Address":"10.0.0.1","Service":{"ID":"c","Service":"s1"}}`, 400, "Node"},
		{"catalog NUL in service ID", "PUT", "/v1/catalog/register", `{"Node":"a","Address":"10.0.0.2","Service":{"ID":"b\u0000c","Service":"s2"}}`, 400, "Service.ID"},
		{"catalog control character in check ID", "PUT", "/v1/catalog/register", `{"Node":"a","Address":"10.0.0.2","Check":{"CheckID":"c\n"}}`, 400, "Check.CheckID"},
		{"deregister without node", "PUT", "/v1/catalog/deregister", `{"ServiceID":"x"}`, 400, "Node"},
		{"deregister own node", "PUT", "/v1/catalog/deregister", `{"Node":"node1"}`, 400, "Node"},
		// KV.
		{"kv bad flags", "PUT", "/v1/kv/k?flags=-1", "v", 400, "flags"},
		{"kv bad cas", "PUT", "/v1/kv/k?cas=abc", "v", 400, "cas"},
		{"kv sessions", "PUT", "/v1/kv/k?acquire=abc", "v", 400, "acquire"},
		{"kv oversized value", "PUT", "/v1/kv/k", strings.Repeat("v", 2000), 413, "body"},
		{"kv put without key", "PUT", "/v1/kv/", "v", 400, "key"},
		{"kv key not UTF-8", "PUT", "/v1/kv/a%ff%fe", "v", 400, "key"},
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

// TestConnectBadInput: malformed and invalid intentions, CA configurations, authorization
// requests and Connect queries get a 4xx naming the field (Consul's exact message where a
// client might match on it), and change nothing.
func TestConnectBadInput(t *testing.T) {
	r := startRegistry(t)
	_, err := r.Client.Connect().IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "db", Action: api.IntentionActionAllow}, nil)
	must(t, err)
	code, _, body := r.do(t, "POST", "/v1/connect/intentions", `{"SourceName":"api","DestinationName":"db","Action":"deny"}`)
	var created struct{ ID string }
	if code != 200 || json.Unmarshal([]byte(body), &created) != nil || created.ID == "" {
		t.Fatalf("create: %d %s", code, body)
	}
	id := created.ID
	td := r.Store.TrustDomain()
	const exact = "/v1/connect/intentions/exact?source=web&destination=db"
	cases := []struct {
		name         string
		method, path string
		body         string
		status       int
		field        string
	}{
		// Intentions.
		{"exact malformed", "PUT", exact, `{"Action":`, 400, "body"},
		{"exact not an object", "PUT", exact, `"allow"`, 400, "body"},
		{"exact empty body", "PUT", exact, ``, 400, "body"},
		{"exact bad action", "PUT", exact, `{"Action":"perhaps"}`, 400, "Action"},
		{"exact action type", "PUT", exact, `{"Action":1}`, 400, "Action: expected"},
		{"exact source type", "PUT", exact, `{"Action":"allow","SourceType":"k8s"}`, 400, "SourceType"},
		{"exact action with permissions", "PUT", exact, `{"Action":"allow","Permissions":[{"Action":"allow","HTTP":{"PathExact":"/a"}}]}`, 400, "Action"},
		{"exact bad path regex", "PUT", exact, `{"Permissions":[{"Action":"deny","HTTP":{"PathRegex":"("}}]}`, 400, "Permissions[0].HTTP.PathRegex"},
		{"exact relative path", "PUT", exact, `{"Permissions":[{"Action":"deny","HTTP":{"PathPrefix":"api"}}]}`, 400, "PathPrefix"},
		{"exact bad method", "PUT", exact, `{"Permissions":[{"Action":"deny","HTTP":{"Methods":["FETCH"]}}]}`, 400, "Methods"},
		{"exact long description", "PUT", exact, `{"Action":"allow","Description":"` + strings.Repeat("d", 600) + `"}`, 400, "Description"},
		{"exact meta type", "PUT", exact, `{"Action":"allow","Meta":{"k":1}}`, 400, "Meta"},
		{"exact peer", "PUT", exact, `{"Action":"allow","SourcePeer":"other"}`, 400, "SourcePeer"},
		{"exact missing source", "PUT", "/v1/connect/intentions/exact?destination=db", `{"Action":"allow"}`, 400, "source"},
		{"exact missing destination", "PUT", "/v1/connect/intentions/exact?source=web", `{"Action":"allow"}`, 400, "destination"},
		{"exact partial wildcard", "PUT", "/v1/connect/intentions/exact?source=we*&destination=db", `{"Action":"allow"}`, 400, "SourceName"},
		{"exact bad name", "PUT", "/v1/connect/intentions/exact?source=w%20eb&destination=db", `{"Action":"allow"}`, 400, "SourceName"},
		{"exact namespace", "PUT", "/v1/connect/intentions/exact?source=team/web&destination=db", `{"Action":"allow"}`, 400, "namespace"},
		{"exact partition", "PUT", "/v1/connect/intentions/exact?source=p/default/web&destination=db", `{"Action":"allow"}`, 400, "partition"},
		{"exact get missing source", "GET", "/v1/connect/intentions/exact?destination=db", ``, 400, "source"},
		{"exact delete missing destination", "DELETE", "/v1/connect/intentions/exact?source=web", ``, 400, "destination"},
		{"create namespace", "POST", "/v1/connect/intentions", `{"SourceNS":"team","SourceName":"a","DestinationName":"b","Action":"allow"}`, 400, "SourceNS"},
		{"create without destination", "POST", "/v1/connect/intentions", `{"SourceName":"a","Action":"allow"}`, 400, "DestinationName"},
		{"create wildcard ns", "POST", "/v1/connect/intentions", `{"SourceNS":"*","SourceName":"a","DestinationName":"b","Action":"allow"}`, 400, "SourceName"},
		{"create duplicate", "POST", "/v1/connect/intentions", `{"SourceName":"web","DestinationName":"db","Action":"deny"}`, 409, "SourceName/DestinationName"},
		{"update bad id", "PUT", "/v1/connect/intentions/not-a-uuid", `{"SourceName":"a","DestinationName":"b","Action":"allow"}`, 400, "id"},
		{"update unknown id", "PUT", "/v1/connect/intentions/00000000-0000-4000-8000-000000000000", `{"SourceName":"a","DestinationName":"b","Action":"allow"}`, 404, "non-existent intention"},
		{"update onto another pair", "PUT", "/v1/connect/intentions/" + id, `{"SourceName":"web","DestinationName":"db","Action":"allow"}`, 409, "SourceName/DestinationName"},
		{"update invalid", "PUT", "/v1/connect/intentions/" + id, `{"SourceName":"api","DestinationName":"db","Action":"maybe"}`, 400, "Action"},
		{"delete unknown id", "DELETE", "/v1/connect/intentions/00000000-0000-4000-8000-000000000000", ``, 404, "non-existent intention"},
		{"get bad id", "GET", "/v1/connect/intentions/xyz", ``, 400, "id"},
		{"match without by", "GET", "/v1/connect/intentions/match?name=db", ``, 400, "'by' parameter must be one of 'source' or 'destination'"},
		{"match bad by", "GET", "/v1/connect/intentions/match?by=both&name=db", ``, 400, "by"},
		{"match without name", "GET", "/v1/connect/intentions/match?by=source", ``, 400, "required query parameter 'name' not set"},
		{"match namespace", "GET", "/v1/connect/intentions/match?by=source&name=team/web", ``, 400, "namespace"},
		{"check without destination", "GET", "/v1/connect/intentions/check?source=web", ``, 400, "required query parameter 'destination' not set"},
		{"check source type", "GET", "/v1/connect/intentions/check?source=web&destination=db&source-type=k8s", ``, 400, "source-type"},
		{"list bad filter", "GET", "/v1/connect/intentions?filter=Bogus+%3D%3D+1", ``, 400, "Bogus"},
		// CA configuration.
		{"ca malformed", "PUT", "/v1/connect/ca/configuration", `{"Provider":`, 400, "body"},
		{"ca null", "PUT", "/v1/connect/ca/configuration", `null`, 400, "body"},
		{"ca no provider", "PUT", "/v1/connect/ca/configuration", `{"Config":{"LeafCertTTL":"1h"}}`, 400, "Provider"},
		{"ca vault", "PUT", "/v1/connect/ca/configuration", `{"Provider":"vault","Config":{}}`, 400, "Provider"},
		{"ca provider type", "PUT", "/v1/connect/ca/configuration", `{"Provider":1}`, 400, "Provider"},
		{"ca config not object", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":[]}`, 400, "Config"},
		{"ca config keys differing in case", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","provider":"vault"}`, 400, `"Provider" and "provider"`},
		{"ca config inner keys differing", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"LeafCertTTL":"1h","leaf_cert_ttl":"2h"}}`, 400, `"LeafCertTTL" and "leaf_cert_ttl"`},
		{"intention keys differing in case", "PUT", exact, `{"Action":"allow","action":"deny"}`, 400, `"Action" and "action"`},
		{"ca bad ttl", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"LeafCertTTL":"soon"}}`, 400, "LeafCertTTL"},
		{"ca ttl too short", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"LeafCertTTL":"100ms"}}`, 400, "LeafCertTTL"},
		{"ca ttl as ns", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"LeafCertTTL":5}}`, 400, "LeafCertTTL"},
		{"ca root shorter than leaves", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"LeafCertTTL":"72h","RootCertTTL":"100h"}}`, 400, "RootCertTTL"},
		{"ca rotation period", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"RotationPeriod":"-1s"}}`, 400, "RotationPeriod"},
		{"ca rotation before leaves expire", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"LeafCertTTL":"1h","RotationPeriod":"30m"}}`, 400, "RotationPeriod: 30m0s: must be at least LeafCertTTL 1h0m0s"},
		{"ca rsa", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"PrivateKeyType":"rsa","PrivateKeyBits":2048}}`, 400, "PrivateKeyType"},
		{"ca p384", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"PrivateKeyBits":384}}`, 400, "PrivateKeyBits"},
		{"ca root cert", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"RootCert":"-----BEGIN CERTIFICATE-----"}}`, 400, "RootCert"},
		{"ca private key garbage", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"PrivateKey":"garbage"}}`, 400, "PrivateKey"},
		{"ca private key type", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"PrivateKey":7}}`, 400, "PrivateKey"},
		{"ca unknown key", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","Config":{"LeafCertTtlz":"1h"}}`, 400, "LeafCertTtlz"},
		{"ca force type", "PUT", "/v1/connect/ca/configuration", `{"Provider":"consul","ForceWithoutCrossSigning":"yes"}`, 400, "ForceWithoutCrossSigning"},
		// Authorization, leaves, roots: Consul's messages.
		{"authorize malformed", "POST", "/v1/agent/connect/authorize", `{"Target":`, 400, "Request decode failed"},
		{"authorize target type", "POST", "/v1/agent/connect/authorize", `{"Target":7}`, 400, "Target"},
		{"authorize no target", "POST", "/v1/agent/connect/authorize", `{"ClientCertURI":"spiffe://` + td + `/ns/default/dc/dc1/svc/web"}`, 400, "Target service must be specified"},
		{"authorize no uri", "POST", "/v1/agent/connect/authorize", `{"Target":"db"}`, 400, "ClientCertURI not a valid Connect identifier"},
		{"authorize bad uri", "POST", "/v1/agent/connect/authorize", `{"Target":"db","ClientCertURI":"https://web"}`, 400, "ClientCertURI not a valid Connect identifier"},
		{"authorize signing uri", "POST", "/v1/agent/connect/authorize", `{"Target":"db","ClientCertURI":"spiffe://` + td + `"}`, 400, "ClientCertURI not a valid Service identifier"},
		{"authorize agent uri", "POST", "/v1/agent/connect/authorize", `{"Target":"db","ClientCertURI":"spiffe://` + td + `/agent/client/dc/dc1/id/abc"}`, 400, "ClientCertURI not a valid Service identifier"},
		{"authorize namespace", "POST", "/v1/agent/connect/authorize", `{"Target":"db","Namespace":"team","ClientCertURI":"spiffe://` + td + `/ns/default/dc/dc1/svc/web"}`, 400, "Namespace"},
		{"leaf bad name", "GET", "/v1/agent/connect/ca/leaf/we%20b", ``, 400, "service"},
		{"leaf empty name", "GET", "/v1/agent/connect/ca/leaf/", ``, 400, "service"},
		{"leaf bad index", "GET", "/v1/agent/connect/ca/leaf/web?index=x", ``, 400, "index"},
		{"roots bad pem", "GET", "/v1/connect/ca/roots?pem=maybe", ``, 400, "pem"},
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
	// The intentions are as they were.
	all, _, err := r.Client.Connect().Intentions(nil)
	must(t, err)
	if len(all) != 2 || all[0].SourceName != "api" || all[0].Action != api.IntentionActionDeny || all[1].Action != api.IntentionActionAllow {
		t.Fatalf("intentions after bad input: %+v", all)
	}
	cfg, _, err := r.Client.Connect().CAGetConfig(nil)
	must(t, err)
	if cfg.Config["LeafCertTTL"] != "72h" || cfg.Config["PrivateKey"] != nil {
		t.Fatalf("CA config after bad input: %+v", cfg.Config)
	}
}

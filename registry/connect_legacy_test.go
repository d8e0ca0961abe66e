//lint:file-ignore SA1019 this file tests the deprecated ID-based intentions API, which clients still call.

package registry_test

import (
	"testing"

	"github.com/hashicorp/consul/api"
)

// TestLegacyIntentions drives the deprecated ID-based intentions API through consul/api:
// POST creates with an ID and timestamps, a second intention for the pair is refused, PUT by ID
// updates, GET by ID reads (nil when absent), DELETE by ID removes; the exact endpoint shows
// the same intention with Consul's fields.
func TestLegacyIntentions(t *testing.T) {
	r := startRegistry(t)
	connect := r.Client.Connect()
	id, _, err := connect.IntentionCreate(&api.Intention{SourceName: "api", DestinationName: "cache", Action: api.IntentionActionDeny, Meta: map[string]string{"k": "v"}}, nil)
	must(t, err)
	x, _, err := connect.IntentionGet(id, nil)
	must(t, err)
	if x == nil || x.ID != id || x.CreatedAt.IsZero() || x.UpdatedAt.IsZero() || len(x.Hash) == 0 || x.Meta["k"] != "v" || x.Precedence != 9 {
		t.Fatalf("legacy intention %+v", x)
	}
	if _, _, err := connect.IntentionCreate(&api.Intention{SourceName: "api", DestinationName: "cache", Action: api.IntentionActionAllow}, nil); err == nil {
		t.Fatal("a second intention for the same pair was created")
	}
	x.Action, x.Description = api.IntentionActionAllow, "now allowed"
	_, err = connect.IntentionUpdate(x, nil)
	must(t, err)
	y, _, err := connect.IntentionGet(id, nil)
	must(t, err)
	if y.Action != api.IntentionActionAllow || y.Description != "now allowed" || !y.CreatedAt.Equal(x.CreatedAt) || y.ModifyIndex <= x.ModifyIndex {
		t.Fatalf("after update %+v", y)
	}
	code, _, body := r.do(t, "GET", "/v1/connect/intentions/exact?source=api&destination=cache", "")
	hasKeys(t, "Intention", jsonKeys(t, body), "ID", "CreatedAt", "UpdatedAt", "SourceNS", "SourceName", "DestinationNS",
		"DestinationName", "SourceType", "Action", "Meta", "Precedence", "Hash", "CreateIndex", "ModifyIndex")
	if code != 200 {
		t.Fatalf("exact: %d", code)
	}
	_, err = connect.IntentionDelete(id, nil)
	must(t, err)
	if z, _, err := connect.IntentionGet(id, nil); err != nil || z != nil {
		t.Fatalf("after delete: %+v %v", z, err)
	}
	code, h, body := r.do(t, "GET", "/v1/connect/intentions/exact?source=api&destination=cache", "")
	if code != 404 || body != "Intention not found" || h.Get("X-Consul-Index") == "" {
		t.Fatalf("absent exact: %d %q index %q", code, body, h.Get("X-Consul-Index"))
	}
}

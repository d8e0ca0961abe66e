package pod

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestDeregisterUnknown: deregistering an instance the registry does not know (a pod that
// stopped before it was ever healthy) succeeds; other failures are errors.
func TestDeregisterUnknown(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/agent/service/deregister/gone-1":
			http.Error(w, `Unknown service ID "gone-1". Ensure that the service ID is passed, not the service name.`, http.StatusNotFound)
		case "/v1/agent/service/deregister/web-1":
			w.WriteHeader(http.StatusOK)
		default:
			http.Error(w, "boom", http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	reg, err := NewConsulRegistry(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := reg.Deregister(ctx, "gone-1"); err != nil {
		t.Errorf("deregister an unknown instance: %v", err)
	}
	if err := reg.Deregister(ctx, "web-1"); err != nil {
		t.Errorf("deregister: %v", err)
	}
	if err := reg.Deregister(ctx, "broken-1"); err == nil {
		t.Error("a 500 from the registry was not an error")
	}
}

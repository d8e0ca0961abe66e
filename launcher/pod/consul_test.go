package pod

import (
	"context"
	"errors"
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

// TestSetHealthUnknownCheck: a TTL update the registry answers with 404 "Unknown check ID"
// (as Consul and cmd/registry do for a check they lost) is ErrNotRegistered; a 500 is not.
func TestSetHealthUnknownCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/agent/check/update/" + CheckID("gone-1"):
			http.Error(w, `Unknown check ID "podmesh:gone-1". Ensure that the check ID is passed, not the check name.`, http.StatusNotFound)
		case "/v1/agent/check/update/" + CheckID("web-1"):
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
	if err := reg.SetHealth(ctx, "gone-1", "passing", "ok"); !errors.Is(err, ErrNotRegistered) {
		t.Errorf("TTL update of a lost check: %v; want ErrNotRegistered", err)
	}
	if err := reg.SetHealth(ctx, "web-1", "passing", "ok"); err != nil {
		t.Errorf("TTL update: %v", err)
	}
	if err := reg.SetHealth(ctx, "broken-1", "passing", "ok"); err == nil || errors.Is(err, ErrNotRegistered) {
		t.Errorf("a 500 on a TTL update: %v; want an error other than ErrNotRegistered", err)
	}
}

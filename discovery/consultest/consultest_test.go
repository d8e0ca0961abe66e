package consultest

import (
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestMain(m *testing.M) {
	defer RemoveBuilt()
	m.Run()
}

// StartRegistry builds and runs Podmesh's registry, which keeps what it acknowledged across
// a kill and a restart on the same address.
func TestStartRegistryRestartKeepsData(t *testing.T) {
	a := StartRegistry(t)
	if a.Kind() != KindRegistry {
		t.Fatalf("kind %q", a.Kind())
	}
	a.Register(t, "web", "web-1", "127.0.0.1:7001", nil)
	a.Kill()
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	es, _, err := a.Client().Health().Service("web", "", true, &api.QueryOptions{})
	if err != nil || len(es) != 1 || es[0].Service.ID != "web-1" || es[0].Node.Node != "podmesh-test" {
		t.Fatalf("after a restart: %+v %v", es, err)
	}
}

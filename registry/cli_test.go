package registry_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
)

// TestConsulCLI is acceptance 3: the consul v1.14.0 command-line client lists the registry's
// services and KV keys.
func TestConsulCLI(t *testing.T) {
	bin := testutil.Tool(t, "consul")
	r := startRegistry(t, func(o *regOptions) { o.token = "cli-token" })
	a := r.Client.Agent()
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "web-1", Name: "web", Tags: []string{"v1", "canary"}, Port: 8080}))
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "api-1", Name: "api", Port: 8081}))
	for k, v := range map[string]string{"app/config": "hello", "app/db/url": "postgres://db", "flag": "on"} {
		_, err := r.Client.KV().Put(&api.KVPair{Key: k, Value: []byte(v)}, nil)
		must(t, err)
	}
	home := t.TempDir()
	consul := func(args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = []string{"HOME=" + home} // no CONSUL_* from the environment
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	addr := "-http-addr=" + r.Addr
	tok := "-token=cli-token"

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"catalog services", []string{"catalog", "services", addr}, "api\nweb\n"},
		{"catalog services -tags", []string{"catalog", "services", "-tags", addr}, "api      \nweb      canary,v1\n"},
		{"kv get -recurse", []string{"kv", "get", "-recurse", tok, addr}, "app/config:hello\napp/db/url:postgres://db\nflag:on\n"},
		{"kv get key", []string{"kv", "get", tok, addr, "app/config"}, "hello\n"},
		{"kv get -keys", []string{"kv", "get", "-keys", tok, addr, "app/"}, "app/config\napp/db/\n"},
	}
	t.Run("commands", func(t *testing.T) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel() // each consul invocation takes a moment to start
				out, err := consul(tc.args...)
				if err != nil {
					t.Fatalf("consul %s: %v\n%s", strings.Join(tc.args, " "), err, out)
				}
				if out != tc.want {
					t.Fatalf("consul %s printed\n%q\nwant\n%q", strings.Join(tc.args, " "), out, tc.want)
				}
			})
		}
	})
	// Without the token, KV reads are refused.
	if out, err := consul("kv", "get", "-recurse", addr); err == nil || !strings.Contains(out, "403") {
		t.Fatalf("kv get without token: err %v, output %q", err, out)
	}
	// Writes through the CLI land in the registry.
	if out, err := consul("kv", "put", tok, addr, "cli/written", "yes"); err != nil {
		t.Fatalf("kv put: %v %s", err, out)
	}
	p, _, err := r.Client.KV().Get("cli/written", nil)
	must(t, err)
	if p == nil || string(p.Value) != "yes" {
		t.Fatalf("cli/written = %+v", p)
	}
}

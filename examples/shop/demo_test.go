package shop_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
)

// TestDemo runs examples/demo.sh (what make demo runs) on compose.yaml with the real
// programs built the way make build lays them out (the launcher finds the sidecar, the
// registry and podmesh-init beside itself), so CI catches a broken demo without running
// make demo: every pod healthy and reachable through the ingress, no failed request at a
// fixed rate while a catalog replica is SIGKILLed and restarted, nothing left after down.
//
// It runs the demo on a project name, bridge, /24 and host port of its own: a /24 of
// 10.232.0.0/16, which neither the default pod subnet (10.89.0.0/16, what make demo uses)
// nor the launcher's tests (10.231.0.0/16) nor its benchmark (10.86.0.0/24) touch, at a
// lower rate for shorter times: about 15 s.
func TestDemo(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.Tool(t, "curl")
	testutil.Tool(t, "ip")
	ctx := testutil.Context(t, 3*time.Minute)
	bin := filepath.Join(t.TempDir(), "bin")
	for dir, pkgs := range map[string][]string{
		bin:                        {"../../cmd/launcher", "../../cmd/sidecar", "../../cmd/registry", "../../launcher/initproc/podmesh-init"},
		filepath.Join(bin, "shop"): {"./frontend", "./catalog", "./prices", "./loadgen"},
	} {
		args := append([]string{"build", "-o", dir + "/"}, pkgs...)
		if out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	n := os.Getpid() % 250
	project := fmt.Sprintf("shoptest%d", os.Getpid())
	cmd := exec.CommandContext(ctx, "bash", "../demo.sh")
	cmd.Env = append(os.Environ(),
		"BIN="+bin, "SHOP_BIN="+filepath.Join(bin, "shop"),
		"SHOP_PROJECT="+project,
		fmt.Sprintf("SHOP_BRIDGE=pmdemo%05x", os.Getpid()%0xfffff),
		fmt.Sprintf("SHOP_SUBNET=10.232.%d.0/24", n+1),
		"SHOP_EXPOSE="+testutil.FreePort(t),
		"RATE=50", "STEADY=2s", "KILL_LOAD=4s",
	)
	// Issue 6: with Prometheus and Jaeger built (always in CI: make test builds them), the
	// demo runs them and prints where to look, with the frontend's traces found in Jaeger.
	prom, promOK := testutil.BuiltTool("prometheus")
	jaeger, jaegerOK := testutil.BuiltTool("jaeger")
	observe := promOK && jaegerOK && filepath.Dir(prom) == filepath.Dir(jaeger)
	if !observe && os.Getenv("PODMESH_REQUIRE_TOOLS") == "1" {
		t.Fatalf("prometheus (%q) and jaeger (%q) must be built in one directory under PODMESH_REQUIRE_TOOLS=1", prom, jaeger)
	}
	if observe {
		cmd.Env = append(cmd.Env, "TOOLBIN="+filepath.Dir(prom))
	}
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("demo.sh: %v", err)
	}
	for _, want := range []string{
		"every pod healthy and the frontend answering",
		"steady: 100 requests at 50/s", "errors    0 (0.00%)",
		"no failed request while catalog-1 died and came back",
		"catalog   1        10.232.",
		"app killed by SIGKILL",
		"nothing left: no podmesh-" + project + " network namespace",
		"demo finished: OK",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
	// The kill happened under load: the run across it counted both replicas.
	if observe {
		s := out.String()
		for _, want := range []string{"Prometheus:       http://127.0.0.1:", "targets up so far",
			"Jaeger:           http://127.0.0.1:", "traces of the frontend so far",
			"Grafana:          provisioning in "} {
			if !strings.Contains(s, want) {
				t.Errorf("the demo's where-to-look lacks %q", want)
			}
		}
		if strings.Contains(s, " 0 traces of the frontend so far") {
			t.Errorf("the demo's sidecars sent no trace of the frontend to Jaeger")
		}
		if strings.Contains(s, " 0 targets up so far") {
			t.Errorf("Prometheus found no target through the registry")
		}
	}
	if s := out.String(); strings.Count(s, "errors    0 (0.00%)") != 2 {
		t.Errorf("want two load runs without errors")
	}
}

package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/deploy/internal/promtest"
	"github.com/podmesh/podmesh/internal/testutil"
)

// The launcher's programs, built by testMain beside the sidecar.
var launcherBin, initBin, testAppBin string

// buildLauncher builds the launcher, its small init and the launcher tests' app into dir.
func buildLauncher(dir string) error {
	launcherBin, initBin, testAppBin = filepath.Join(dir, "launcher"), filepath.Join(dir, "podmesh-init"), filepath.Join(dir, "testapp")
	args := []string{"build", "-o", dir + "/", "../../cmd/launcher", "../../launcher/initproc/podmesh-init", "../../launcher/internal/testapp"}
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	// The apps run as nobody.
	return os.Chmod(dir, 0o755)
}

// launcherProject runs `launcher up` on the registry at registry with a small project: web
// (meshed, limited to 256 MiB and half a CPU) and hog, which allocates 1 GiB under a 200 MiB
// limit and so is OOM-killed and restarted again and again. The launcher serves its metrics
// at the default address (the bridge's gateway) and registers itself there. Its pods use a
// /24 of 10.233.0.0/16, which neither the default pod subnet nor the launcher's or the demo's
// tests use. `launcher down` runs when the test ends.
func launcherProject(t *testing.T, registry string) (project string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil { // the apps run in the project's directory
		t.Fatal(err)
	}
	project = fmt.Sprintf("deploye2e%d", os.Getpid()%100000)
	compose := fmt.Sprintf(`name: %s
x-podmesh:
  subnet: 10.233.%d.0/24
  bridge: pmdeploy%05x
services:
  web:
    command: [%s, -listen, "127.0.0.1:8080"]
    deploy:
      resources: {limits: {memory: 256M, cpus: "0.5"}}
    x-podmesh: {port: 8080}
  hog:
    command: [%[4]s, -alloc-mib, "1024"]
    deploy:
      resources: {limits: {memory: 200M}}
      restart_policy: {condition: any, delay: 500ms}
`, project, os.Getpid()%250+1, os.Getpid()%0xfffff, testAppBin)
	file := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(file, []byte(compose), 0o644); err != nil {
		t.Fatal(err)
	}
	common := []string{"-state-dir", filepath.Join(dir, "state"), "-log-dir", filepath.Join(dir, "logs"),
		"-init-bin", initBin, "-sidecar-bin", sidecarBin, "-registry", "http://" + registry}
	var out bytes.Buffer
	up := exec.Command(launcherBin, append(common, "up", "-f", file)...)
	up.Stdout, up.Stderr = &out, &out
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { up.Wait(); close(done) }()
	t.Cleanup(func() {
		down := exec.Command(launcherBin, append(common, "down", "-p", project, "-timeout", "1m")...)
		if b, err := down.CombinedOutput(); err != nil {
			t.Errorf("launcher down: %v\n%s", err, b)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			up.Process.Signal(syscall.SIGTERM)
			<-done
		}
		if t.Failed() {
			t.Logf("launcher output:\n%s", out.String())
		}
	})
	return project
}

// checkLauncherDashboard is the launcher dashboard's part of TestDashboardsHaveData: a
// launcher runs a project on the registry Prometheus discovers from, Prometheus (the
// shipped configuration) finds the launcher and the pods' sidecars there and scrapes them
// through the bridge; the OOM kills and restarts happened for real.
func checkLauncherDashboard(t *testing.T, prom *promtest.Server, registry string) {
	testutil.RequirePrivileged(t)
	project := launcherProject(t, registry)
	testutil.Eventually(t, 60*time.Second, 250*time.Millisecond, func() error {
		tgs, err := prom.ActiveTargets()
		if err != nil {
			return err
		}
		up := map[string]bool{}
		for _, tg := range tgs {
			up[tg.Labels["instance_id"]] = tg.Health == "up"
		}
		for _, id := range []string{"podmesh-launcher-" + project, "web-1"} {
			if !up[id] {
				return fmt.Errorf("target %s not up (targets: %v)", id, up)
			}
		}
		return nil
	})
	for _, q := range []string{
		`sum(podmesh_launcher_oom_kills_total{service="hog", instance_id="podmesh-launcher-` + project + `"})`,
		`sum(podmesh_launcher_restarts_total{service="hog"})`,
		`sum(podmesh_launcher_memory_bytes{service="web", member="sidecar"})`,
		// web-1's sidecar, scraped at POD_IP:15090 through the bridge.
		`count(podmesh_tls_cert_expiry_timestamp_seconds{service="web", instance_id="web-1"})`,
	} {
		testutil.Eventually(t, 60*time.Second, 250*time.Millisecond, func() error {
			s, err := prom.Query(q + " > 0")
			if err != nil {
				return err
			}
			if len(s) == 0 {
				return fmt.Errorf("%s: no data", q)
			}
			return nil
		})
	}
}

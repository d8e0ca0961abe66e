package compose

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to Load as a compose file. Load must never panic, and a file it
// accepts must give a project that keeps Load's promises.
func FuzzLoad(f *testing.F) {
	seeds := []string{
		"services:\n  web: {command: x}\n",
		"services:\n  web:\n    command: ./web\n    depends_on: [db]\n    x-podmesh: {port: 80, upstreams: [db, {name: db2, timeout: 1s}]}\n  db: {command: x, x-podmesh: {port: 1}}\n  db2: {command: x, x-podmesh: {port: 2}}\n",
		"x-a: &a\n  command: x\nservices:\n  web:\n    <<: *a\n    volumes: [./:/x]\n",
		"services:\n  web:\n    image: nginx\n",
		"services:\n  a: {command: x, depends_on: [b]}\n  b: {command: x, depends_on: [a]}\n",
		"services:\n  web: {command: x, environment: {A: '${B:-c}'}, deploy: {replicas: 2, resources: {limits: {cpus: 0.5, memory: 64m, pids: 20}}}}\n",
		"x-podmesh: {trace_endpoint: 'http://127.0.0.1:4318/v1/traces', default_policy: deny}\nservices:\n  web: {command: x}\n",
		"a: &a [*a]\n",
		"services: [\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "compose.yaml")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := Load(t.Context(), path)
		if err != nil {
			if p != nil {
				t.Fatalf("Load returned a project with error %v", err)
			}
			return
		}
		if len(p.Services) == 0 {
			t.Fatal("accepted a project without services")
		}
		if e := p.Mesh.TraceEndpoint; e != "" {
			if _, err := TraceTarget(e); err != nil {
				t.Fatalf("accepted trace endpoint %q: %v", e, err)
			}
		}
		for _, s := range p.Services {
			if len(s.Command) == 0 || s.Command[0] == "" {
				t.Fatalf("service %q accepted with an empty command", s.Name)
			}
			if s.Replicas < 0 || s.StopSignal == 0 || s.Restart.Condition == "" {
				t.Fatalf("service %q: bad defaults %+v", s.Name, s)
			}
		}
		checkOrder(t, p)
	})
}

package compose

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// project writes files (name → content; a name ending in "/" makes a directory) into a fresh
// directory, changes into it, and returns its absolute path. Tests using it cannot be parallel.
func project(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

func loadHere(t *testing.T) (*Project, error) {
	t.Helper()
	return Load(testContext(t), "compose.yaml")
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// svc is a service with every default applied, for golden expectations.
func svc(name string, command ...string) Service {
	return Service{
		Name:            name,
		Command:         command,
		Replicas:        1,
		Restart:         RestartPolicy{Condition: RestartAny, Delay: time.Second, Window: 10 * time.Second},
		StopSignal:      syscall.SIGTERM,
		StopGracePeriod: 10 * time.Second,
		Mesh:            Mesh{Protocol: "http"},
	}
}

func defaultMesh() ProjectMesh {
	return ProjectMesh{Subnet: DefaultSubnet, Bridge: "podmesh0", DefaultPolicy: PolicyAllow}
}

// canon makes a Project comparable as text: JSON, with nil and empty slices and maps alike.
func canon(t *testing.T, p *Project) string {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	v = dropEmpty(v)
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func dropEmpty(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			e = dropEmpty(e)
			switch e := e.(type) {
			case nil:
				delete(v, k)
				continue
			case []any:
				if len(e) == 0 {
					delete(v, k)
					continue
				}
			case map[string]any:
				if len(e) == 0 {
					delete(v, k)
					continue
				}
			}
			v[k] = e
		}
	case []any:
		for i := range v {
			v[i] = dropEmpty(v[i])
		}
	}
	return v
}

func TestLoadGood(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		env   map[string]string
		want  func(dir string) *Project
	}{
		{
			name:  "minimal, project named after the directory",
			files: map[string]string{"compose.yaml": "services:\n  web:\n    command: ./web\n"},
			want: func(dir string) *Project {
				return &Project{Name: filepath.Base(dir), Services: []Service{svc("web", "./web")}, Mesh: defaultMesh()}
			},
		},
		{
			name: "every supported key",
			files: map[string]string{
				"data/":   "",
				"sub/":    "",
				"web.env": "A=from_file\nB=file_b\nC=${UNSET_IN_TEST:-c_default}\n",
				"compose.yaml": `name: Shop
x-podmesh:
  subnet: 10.90.0.0/16
  bridge: pm1
  registry: http://127.0.0.1:8500
  default_policy: deny
  trace_endpoint: http://127.0.0.1:4318
services:
  web:
    entrypoint: ["/usr/bin/env"]
    command: ./web -listen :8080
    env_file: web.env
    environment:
      A: override
      D: ${UNSET_IN_TEST:-d_default}
    working_dir: ./sub
    user: "1000:1000"
    depends_on:
      db:
        condition: service_healthy
      cache: {condition: service_started}
    deploy:
      replicas: 2
      resources:
        limits: {cpus: '0.5', memory: 64M, pids: 100}
      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 5, window: 30s}
    volumes:
      - ./data:/data:ro
      - type: bind
        source: ./data
        target: /data2
    stop_signal: INT
    stop_grace_period: 3s
    x-podmesh:
      port: 8080
      protocol: http
      upstreams: [db, {name: cache, timeout: 2s, retries: 3}, {name: ext.example.com, external: true}]
      expose: 127.0.0.1:18080
      tags: [v1, canary]
      meta: {team: shop, n: 1}
  db:
    command: [./db, --port, "5432"]
    healthcheck:
      test: ["CMD", "./check"]
      interval: 5s
      timeout: 2s
      start_period: 1s
      retries: 5
    x-podmesh: {port: 5432, protocol: tcp}
  cache:
    command: ./cache
    restart: on-failure:3
    x-podmesh: {port: 6379, protocol: tcp, expose: 16379}
`,
			},
			want: func(dir string) *Project {
				web := svc("web", "/usr/bin/env", "./web", "-listen", ":8080")
				web.Environment = []string{"A=override", "B=file_b", "C=c_default", "D=d_default"}
				web.WorkingDir = filepath.Join(dir, "sub")
				web.User = "1000:1000"
				web.DependsOn = []Dependency{{"cache", ConditionStarted}, {"db", ConditionHealthy}}
				web.Replicas = 2
				web.Limits = Limits{NanoCPUs: 500_000_000, MemoryBytes: 64 << 20, Pids: 100}
				web.Restart = RestartPolicy{Condition: RestartOnFailure, Delay: 2 * time.Second, MaxAttempts: 5, Window: 30 * time.Second}
				web.Volumes = []Mount{
					{Source: filepath.Join(dir, "data"), Target: "/data", ReadOnly: true},
					{Source: filepath.Join(dir, "data"), Target: "/data2"},
				}
				web.StopSignal = syscall.SIGINT
				web.StopGracePeriod = 3 * time.Second
				web.Mesh = Mesh{Port: 8080, Protocol: "http",
					Upstreams: []Upstream{
						{Name: "db"},
						{Name: "cache", Policy: map[string]any{"timeout": "2s", "retries": 3}},
						{Name: "ext.example.com", External: true},
					},
					Tags:   []string{"v1", "canary"},
					Meta:   map[string]string{"team": "shop", "n": "1"},
					Expose: netip.MustParseAddrPort("127.0.0.1:18080"),
				}
				db := svc("db", "./db", "--port", "5432")
				db.Healthcheck = &Healthcheck{Test: []string{"CMD", "./check"}, Interval: 5 * time.Second, Timeout: 2 * time.Second, StartPeriod: time.Second, Retries: 5}
				db.Mesh = Mesh{Port: 5432, Protocol: "tcp"}
				cache := svc("cache", "./cache")
				cache.Restart = RestartPolicy{Condition: RestartOnFailure, Delay: time.Second, MaxAttempts: 3, Window: 10 * time.Second}
				cache.Mesh = Mesh{Port: 6379, Protocol: "tcp", Expose: netip.MustParseAddrPort("127.0.0.1:16379")}
				return &Project{
					Name:     "shop",
					Services: []Service{db, cache, web}, // dependencies first, then file order
					Mesh: ProjectMesh{Subnet: mustPrefix("10.90.0.0/16"), Bridge: "pm1", Registry: "http://127.0.0.1:8500", DefaultPolicy: PolicyDeny,
						TraceEndpoint: "http://127.0.0.1:4318"},
				}
			},
		},
		{
			name: "anchors and merge keys, x- extensions ignored",
			files: map[string]string{"compose.yaml": `name: anchors
x-base: &base
  stop_signal: SIGQUIT
  deploy:
    resources:
      limits: {memory: 32m}
services:
  a:
    <<: *base
    command: ./a
    x-notes: anything at all
  b:
    <<: [*base]
    command: ./b
    stop_signal: SIGUSR1
`},
			want: func(dir string) *Project {
				a := svc("a", "./a")
				a.StopSignal = syscall.SIGQUIT
				a.Limits.MemoryBytes = 32 << 20
				b := svc("b", "./b")
				b.StopSignal = syscall.SIGUSR1
				b.Limits.MemoryBytes = 32 << 20
				return &Project{Name: "anchors", Services: []Service{a, b}, Mesh: defaultMesh()}
			},
		},
		{
			name: "restart short forms",
			files: map[string]string{"compose.yaml": `name: r
services:
  a: {command: x, restart: "no"}
  b: {command: x, restart: always}
  c: {command: x, restart: unless-stopped}
  d: {command: x, restart: on-failure}
  e: {command: x, restart: "on-failure:7"}
  f: {command: x, deploy: {restart_policy: {condition: none}}}
`},
			want: func(dir string) *Project {
				mk := func(name, cond string, attempts int) Service {
					s := svc(name, "x")
					s.Restart.Condition = cond
					s.Restart.MaxAttempts = attempts
					return s
				}
				return &Project{Name: "r", Mesh: defaultMesh(), Services: []Service{
					mk("a", RestartNone, 0), mk("b", RestartAny, 0), mk("c", RestartAny, 0),
					mk("d", RestartOnFailure, 0), mk("e", RestartOnFailure, 7), mk("f", RestartNone, 0),
				}}
			},
		},
		{
			name: "healthcheck forms and defaults",
			files: map[string]string{"compose.yaml": `name: h
services:
  shell: {command: x, healthcheck: {test: curl -f http://localhost/}}
  none: {command: x, healthcheck: {test: [NONE]}}
  disabled: {command: x, healthcheck: {test: [CMD, ./check], disable: true}}
  cmd: {command: x, healthcheck: {test: [CMD, ./check, -v], interval: 1m}}
`},
			want: func(dir string) *Project {
				shell := svc("shell", "x")
				shell.Healthcheck = &Healthcheck{Test: []string{"CMD-SHELL", "curl -f http://localhost/"}, Interval: 30 * time.Second, Timeout: 30 * time.Second, Retries: 3}
				cmd := svc("cmd", "x")
				cmd.Healthcheck = &Healthcheck{Test: []string{"CMD", "./check", "-v"}, Interval: time.Minute, Timeout: 30 * time.Second, Retries: 3}
				return &Project{Name: "h", Mesh: defaultMesh(), Services: []Service{shell, svc("none", "x"), svc("disabled", "x"), cmd}}
			},
		},
		{
			name: "zero replicas, optional missing env_file, cpus as a number",
			files: map[string]string{"compose.yaml": `name: z
services:
  batch:
    entrypoint: ./batch
    env_file:
      - path: ./optional.env
        required: false
    deploy: {replicas: 0, resources: {limits: {cpus: 1.25}}}
`},
			want: func(dir string) *Project {
				b := svc("batch", "./batch")
				b.Replicas = 0
				b.Limits.NanoCPUs = 1_250_000_000
				return &Project{Name: "z", Mesh: defaultMesh(), Services: []Service{b}}
			},
		},
		{
			name: "interpolation from the environment and .env",
			files: map[string]string{
				".env": "PORT=9090\nFROM_DOTENV=dotenv\nOVERRIDDEN=dotenv\n",
				"compose.yaml": `name: ${PROJECT:-interp}
services:
  web:
    command: ["./web", "${FROM_DOTENV}", "${OVERRIDDEN}", "${EMPTY:-empty-default}", "${EMPTY-unset-default}", "$$HOME"]
    deploy: {replicas: "${REPLICAS:-3}"}
    x-podmesh: {port: "${PORT:-8080}"}
`,
			},
			env: map[string]string{"OVERRIDDEN": "process", "EMPTY": ""},
			want: func(dir string) *Project {
				w := svc("web", "./web", "dotenv", "process", "empty-default", "", "$HOME")
				w.Replicas = 3
				w.Mesh.Port = 9090
				return &Project{Name: "interp", Mesh: defaultMesh(), Services: []Service{w}}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			dir := project(t, tt.files)
			got, err := loadHere(t)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := tt.want(dir)
			want.Dir = dir
			want.File = filepath.Join(dir, "compose.yaml")
			if g, w := canon(t, got), canon(t, want); g != w {
				t.Errorf("project mismatch\n got: %s\nwant: %s", g, w)
			}
		})
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestLoadBad(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		yaml  string
		want  string // exact error text; $DIR is the project directory
	}{
		{
			name: "image",
			yaml: "services:\n  web:\n    image: nginx\n    command: x\n",
			want: "compose.yaml:3: services.web.image: not supported by podmesh (services run host binaries; use command)",
		},
		{
			name: "several unsupported keys, in line order",
			yaml: `services:
  web:
    command: x
    ports: ["80:80"]
    build: .
    networks: [front]
    privileged: true
    cap_add: [NET_ADMIN]
volumes:
  data: {}
networks:
  front: {}
secrets:
  s: {file: ./s}
`,
			want: `compose.yaml:4: services.web.ports: not supported by podmesh (pods are reached through the mesh; set x-podmesh.port, and x-podmesh.expose for a host address)
compose.yaml:5: services.web.build: not supported by podmesh (services run host binaries; use command)
compose.yaml:6: services.web.networks: not supported by podmesh (each pod gets its own network namespace on the podmesh bridge; see x-podmesh.subnet)
compose.yaml:7: services.web.privileged: not supported by podmesh (the launcher fixes the pod's isolation)
compose.yaml:8: services.web.cap_add: not supported by podmesh (the app runs without capabilities)
compose.yaml:9: volumes: not supported by podmesh
compose.yaml:11: networks: not supported by podmesh (each pod gets its own network namespace on the podmesh bridge; see x-podmesh.subnet)
compose.yaml:13: secrets: not supported by podmesh (bind-mount the file with volumes)`,
		},
		{
			name: "nested unsupported keys",
			yaml: `services:
  web:
    command: x
    depends_on:
      db: {condition: service_started, restart: true}
    deploy:
      mode: global
      resources:
        limits: {cpus: 1, devices: []}
        reservations: {memory: 1g}
    healthcheck: {test: [CMD, x], start_interval: 1s}
    volumes:
      - type: bind
        source: .
        target: /x
        bind: {propagation: shared}
  db: {command: x}
`,
			want: `compose.yaml:5: services.web.depends_on.db.restart: not supported by podmesh
compose.yaml:7: services.web.deploy.mode: not supported by podmesh
compose.yaml:9: services.web.deploy.resources.limits.devices: not supported by podmesh (the launcher fixes the pod's isolation)
compose.yaml:10: services.web.deploy.resources.reservations: not supported by podmesh (podmesh enforces limits only)
compose.yaml:11: services.web.healthcheck.start_interval: not supported by podmesh
compose.yaml:16: services.web.volumes[0].bind: not supported by podmesh`,
		},
		{
			name: "typos get a suggestion, x-podmesh keys are unknown",
			yaml: `services:
  web:
    comand: x
    x-podmesh: {port: 80, prot: http, upstream: [a]}
x-podmesh: {subnett: 10.0.0.0/8}
`,
			want: `compose.yaml:3: services.web.comand: not supported by podmesh (did you mean command?)
compose.yaml:4: services.web.x-podmesh.prot: unknown key (did you mean protocol?)
compose.yaml:4: services.web.x-podmesh.upstream: unknown key (did you mean upstreams?)
compose.yaml:5: x-podmesh.subnett: unknown key (did you mean subnet?)`,
		},
		{
			name: "unsupported key reached through a merge key reports the anchor's line",
			yaml: "x-base: &base\n  image: busybox\nservices:\n  web:\n    <<: *base\n    command: x\n",
			want: "compose.yaml:2: services.web.image: not supported by podmesh (services run host binaries; use command)",
		},
		{
			name: "a key set both by a merge and directly points at the direct one",
			yaml: "x-base: &base\n  stop_signal: SIGQUIT\n  command: x\nservices:\n  web:\n    <<: *base\n    stop_signal: SIGFOO\n",
			want: `compose.yaml:7: services.web.stop_signal: unknown signal "SIGFOO"`,
		},
		{
			name: "duplicate service",
			yaml: "services:\n  web: {command: x}\n  web: {command: y}\n",
			want: "compose.yaml:3: services.web: duplicate key (first at line 2)",
		},
		{
			name: "invalid YAML",
			yaml: "services:\n  web: [\n",
			want: "compose.yaml:2: invalid YAML: did not find expected node content",
		},
		{
			name: "no services",
			yaml: "name: empty\n",
			want: "compose.yaml: services: no services defined",
		},
		{
			name: "schema type error",
			yaml: "services:\n  web:\n    command: [./web, 1]\n    x-podmesh: {port: 1}\n",
			want: "compose.yaml:3: services.web.command[1]: must be a string",
		},
		{
			name: "required variable missing",
			yaml: "services:\n  web:\n    command: x\n    environment:\n      A: ${PODMESH_TEST_UNSET:?set it}\n",
			want: "compose.yaml:5: services.web.environment.A: interpolation: required variable PODMESH_TEST_UNSET is missing a value: set it",
		},
		{
			name: "bad durations and sizes",
			yaml: `services:
  web:
    command: x
    stop_grace_period: 10x
    healthcheck: {test: [CMD, x], interval: soon}
    deploy:
      restart_policy: {delay: 1y}
      resources: {limits: {memory: lots, cpus: many}}
`,
			want: `compose.yaml:4: services.web.stop_grace_period: invalid duration "10x" (want e.g. 10s, 1m30s)
compose.yaml:5: services.web.healthcheck.interval: invalid duration "soon" (want e.g. 10s, 1m30s)
compose.yaml:7: services.web.deploy.restart_policy.delay: invalid duration "1y" (want e.g. 10s, 1m30s)
compose.yaml:8: services.web.deploy.resources.limits.memory: invalid size "lots" (want bytes or a unit: 64m, 1g)
compose.yaml:8: services.web.deploy.resources.limits.cpus: invalid number of CPUs "many" (want e.g. 0.5)`,
		},
		{
			name: "empty command",
			yaml: "services:\n  web:\n    environment: [A=1]\n  other:\n    command: []\n    entrypoint: [\"\"]\n",
			want: `compose.yaml:2: services.web.command: empty: set command (or entrypoint) to the program to run
compose.yaml:5: services.other.command: the program name is empty`,
		},
		{
			name: "unknown dependency, self dependency, cycles",
			yaml: `services:
  a: {command: x, depends_on: [b]}
  b: {command: x, depends_on: [c]}
  c: {command: x, depends_on: [a]}
  d: {command: x, depends_on: [d, nosuch]}
  e:
    command: x
    depends_on:
      f: {condition: service_healthy}
  f: {command: x, depends_on: [e]}
  g:
    command: x
    depends_on: {m: {condition: service_healthy}}
  m: {command: x, x-podmesh: {port: 80}}
`,
			want: `compose.yaml:5: services.d.depends_on: unknown service "nosuch"
compose.yaml:9: services.e.depends_on.f: condition service_healthy but service "f" has no healthcheck (nor x-podmesh.port, whose TCP check would do)
compose.yaml:4: services.c.depends_on: dependency cycle: a -> b -> c -> a
compose.yaml:5: services.d.depends_on: dependency cycle: d -> d
compose.yaml:10: services.f.depends_on: dependency cycle: e -> f -> e`,
		},
		{
			name: "limits",
			yaml: `services:
  a: {command: x, deploy: {resources: {limits: {cpus: 0, memory: "0", pids: 0}}}}
  b: {command: x, deploy: {resources: {limits: {cpus: -1, memory: "-1", pids: -5}}}}
  c: {command: x, deploy: {resources: {limits: {cpus: 0.001, memory: 1m, pids: 8}}}}
  d: {command: x, deploy: {replicas: -1}}
`,
			want: `compose.yaml:5: services.d.deploy.replicas: -1 must not be negative
compose.yaml:2: services.a.deploy.resources.limits.cpus: 0 must be positive (leave it out for no limit)
compose.yaml:2: services.a.deploy.resources.limits.memory: 0 must be positive (leave it out for no limit)
compose.yaml:2: services.a.deploy.resources.limits.pids: 0 must be positive (leave it out for no limit)
compose.yaml:3: services.b.deploy.resources.limits.cpus: -1 must be positive (leave it out for no limit)
compose.yaml:3: services.b.deploy.resources.limits.memory: -1 must be positive (leave it out for no limit)
compose.yaml:3: services.b.deploy.resources.limits.pids: -5 must be positive (leave it out for no limit)
compose.yaml:4: services.c.deploy.resources.limits.cpus: 0.001 is below the minimum 0.01 (the kernel's smallest CPU quota is 1ms per 100ms)
compose.yaml:4: services.c.deploy.resources.limits.memory: 1048576 bytes is below the minimum 16777216 (16 MiB: the pod's sidecar and init share the limit)
compose.yaml:4: services.c.deploy.resources.limits.pids: 8 is below the minimum 16 (pids counts the threads of the pod's init, sidecar and app)`,
		},
		{
			name: "service names",
			yaml: "services:\n  Web_1: {command: x}\n  web-1: {command: x}\n  -bad: {command: x}\n  ok.dotted: {command: x}\n",
			want: `compose.yaml:2: services.Web_1: invalid service name "Web_1": it becomes a hostname, so it must be a DNS label (lowercase letters, digits and '-', at most 63, not starting or ending with '-'); try "web-1"
compose.yaml:3: services.web-1: service name "web-1" is the same hostname as service "Web_1"
compose.yaml:4: services.-bad: invalid service name "-bad": it becomes a hostname, so it must be a DNS label (lowercase letters, digits and '-', at most 63, not starting or ending with '-')
compose.yaml:5: services.ok.dotted: invalid service name "ok.dotted": it becomes a hostname, so it must be a DNS label (lowercase letters, digits and '-', at most 63, not starting or ending with '-')`,
		},
		{
			name: "env_file and bind source missing",
			yaml: `services:
  web:
    command: x
    env_file: [present.env, missing.env]
    volumes: [./nope:/nope, "/:/root-of-host:ro"]
`,
			files: map[string]string{"present.env": "A=1\n"},
			want: `compose.yaml:4: services.web.env_file[1]: $DIR/missing.env does not exist
compose.yaml:5: services.web.volumes[0]: bind source $DIR/nope does not exist`,
		},
		{
			name: "volumes that are not bind mounts",
			yaml: `services:
  web:
    command: x
    volumes:
      - data:/data
      - /anon
      - ./:/z:z
      - ./:/rel:ro
      - .:relative
`,
			want: `compose.yaml:5: services.web.volumes[0]: named volume "data" is not supported: bind-mount a host directory (./data:/data)
compose.yaml:6: services.web.volumes[1]: anonymous volume /anon is not supported: bind-mount a host directory (./dir:/anon)
compose.yaml:7: services.web.volumes[2]: option "z" is not supported (only ro and rw are)
compose.yaml:9: services.web.volumes[4]: target "relative" must be an absolute path`,
		},
		{
			name: "the same volume target twice",
			yaml: `services:
  web:
    command: x
    volumes:
      - ./a:/data
      - type: bind
        source: ./b
        target: /data/
`,
			want: `compose.yaml:6: services.web.volumes[1]: target /data is already mounted by volumes[0]`,
		},
		{
			name: "restart",
			yaml: `services:
  a: {command: x, restart: always, deploy: {restart_policy: {condition: any}}}
  b: {command: x, restart: sometimes}
  c: {command: x, restart: "on-failure:x"}
  d: {command: x, deploy: {restart_policy: {condition: maybe, delay: 0s, window: 0s}}}
`,
			want: `compose.yaml:2: services.a.restart: conflicts with deploy.restart_policy; set only one
compose.yaml:3: services.b.restart: invalid value "sometimes" (want no, always, unless-stopped, on-failure or on-failure:N)
compose.yaml:4: services.c.restart: invalid attempt count "x" in "on-failure:x"
compose.yaml:5: services.d.deploy.restart_policy.condition: invalid condition "maybe" (want none, on-failure or any)
compose.yaml:5: services.d.deploy.restart_policy.delay: 0s must be positive
compose.yaml:5: services.d.deploy.restart_policy.window: 0s must be positive`,
		},
		{
			name: "stop signal and grace period, user, healthcheck",
			yaml: `services:
  web:
    command: x
    stop_signal: SIGFOO
    stop_grace_period: -1s
    user: "a:b:c"
    healthcheck: {retries: 0, interval: 0s}
  db:
    command: x
    healthcheck: {test: [CMD]}
  mq:
    command: x
    healthcheck: {test: [WHAT, x]}
`,
			want: `compose.yaml:4: services.web.stop_signal: unknown signal "SIGFOO"
compose.yaml:6: services.web.user: invalid user "a:b:c" (want uid, uid:gid, name or name:group)
compose.yaml:7: services.web.healthcheck.test: required (or set disable: true)
compose.yaml:7: services.web.healthcheck.interval: 0s must be positive
compose.yaml:7: services.web.healthcheck.retries: 0 must be at least 1
compose.yaml:10: services.db.healthcheck.test: CMD needs a program: ["CMD", "program", "args"...]
compose.yaml:13: services.mq.healthcheck.test: must start with CMD, CMD-SHELL or NONE, not "WHAT"
compose.yaml:5: services.web.stop_grace_period: -1s must be positive`,
		},
		{
			name: "mesh",
			yaml: `services:
  web:
    command: x
    x-podmesh:
      port: 70000
      protocol: udp
      upstreams:
        - web
        - nosuch
        - db
        - {name: api, external: true}
        - {name: db}
        - {name: Bad_Host, external: true}
        - 5
        - {timeout: 1s}
      meta: {"bad key": 1}
      tags: [""]
  db: {command: x}
  api: {command: x, x-podmesh: {port: 0}}
`,
			want: `compose.yaml:14: services.web.x-podmesh.upstreams[6]: must be a service name or a mapping with name, not int
compose.yaml:15: services.web.x-podmesh.upstreams[7].name: required: the upstream service's name
compose.yaml:5: services.web.x-podmesh.port: 70000 is out of range 1-65535
compose.yaml:6: services.web.x-podmesh.protocol: "udp" is not one of tcp, http, http2, grpc
compose.yaml:17: services.web.x-podmesh.tags[0]: empty tag
compose.yaml:16: services.web.x-podmesh.meta.bad key: invalid meta key "bad key" (letters, digits, '_' and '-', at most 128)
compose.yaml:19: services.api.x-podmesh.port: 0 is out of range 1-65535
compose.yaml:8: services.web.x-podmesh.upstreams[0]: service "web" lists itself as an upstream
compose.yaml:9: services.web.x-podmesh.upstreams[1]: upstream "nosuch" is not a service of this project (mark it ` + "`external: true`" + ` if it is registered elsewhere)
compose.yaml:10: services.web.x-podmesh.upstreams[2]: upstream "db" has no x-podmesh.port, so nothing serves it through the mesh
compose.yaml:11: services.web.x-podmesh.upstreams[3]: upstream "api" is marked external but is a service of this project
compose.yaml:12: services.web.x-podmesh.upstreams[4]: upstream "db" is already listed at upstreams[2]
compose.yaml:13: services.web.x-podmesh.upstreams[5]: external upstream "Bad_Host" is not a valid hostname`,
		},
		{
			name: "upstream policy keys",
			yaml: `services:
  web:
    command: x
    x-podmesh:
      port: 80
      upstreams:
        - {name: api, lb: random, retries: 1, breakers: {max_requests: 10}}
        - {name: db, listen: "127.0.0.1:80", lbb: random}
  api: {command: x, x-podmesh: {port: 80}}
  db: {command: x, x-podmesh: {port: 80}}
`,
			want: `compose.yaml:8: services.web.x-podmesh.upstreams[1].lbb: unknown upstream policy key "lbb" (want name, external or one of protocol, lb, hash_on, connect_timeout, timeout, per_try_timeout, retries, retry_on, breakers, retry_budget, outlier)
compose.yaml:8: services.web.x-podmesh.upstreams[1].listen: set by the launcher: the app calls the upstream by its name`,
		},
		{
			name: "expose",
			yaml: `services:
  web:
    command: x
    x-podmesh: {port: 80, expose: "127.0.0.1:8080"}
  api:
    command: x
    x-podmesh: {port: 80, expose: 127.0.0.1:8080}
  worker:
    command: x
    x-podmesh: {expose: 8081}
  bad1: {command: x, x-podmesh: {port: 80, expose: "localhost:80"}}
  bad2: {command: x, x-podmesh: {port: 80, expose: 70000}}
  bad3: {command: x, x-podmesh: {port: 80, expose: "10.0.0.1:0"}}
  bad4: {command: x, x-podmesh: {port: 80, expose: [1]}}
`,
			want: `compose.yaml:11: services.bad1.x-podmesh.expose: invalid address "localhost:80" (want IP:PORT such as 127.0.0.1:8080, or a port alone for loopback)
compose.yaml:12: services.bad2.x-podmesh.expose: port 70000 is out of range 1-65535
compose.yaml:13: services.bad3.x-podmesh.expose: "10.0.0.1:0": the port must not be 0
compose.yaml:14: services.bad4.x-podmesh.expose: must be an address such as 127.0.0.1:8080, not []interface {}
compose.yaml:7: services.api.x-podmesh.expose: 127.0.0.1:8080 is already exposed by service "web"
compose.yaml:10: services.worker.x-podmesh.expose: 127.0.0.1:8081: only a service with x-podmesh.port can be exposed (the ingress reaches it through its sidecar)`,
		},
		{
			name: "project mesh",
			yaml: "x-podmesh:\n  subnet: fd00::/64\n  bridge: averyveryverylongbridgename\n  registry: ftp://x\n  default_policy: Deny\n  trace_endpoint: grpc://c:4317\nservices:\n  web: {command: x}\n",
			want: `compose.yaml:5: x-podmesh.default_policy: must be "allow" or "deny", not "Deny"
compose.yaml:6: x-podmesh.trace_endpoint: trace endpoint "grpc://c:4317": want host:port or http://host:port
compose.yaml:2: x-podmesh.subnet: fd00::/64: only IPv4 subnets are supported
compose.yaml:3: x-podmesh.bridge: invalid interface name "averyveryverylongbridgename" (at most 15 characters, no '/', ':' or spaces)
compose.yaml:4: x-podmesh.registry: "ftp://x": only http:// is supported (the pods reach the registry through a plain TCP relay)`,
		},
		{
			name: "fail at run time otherwise",
			yaml: `x-podmesh: {subnet: 10.9.0.0/24, registry: "https://reg.example:8501"}
services:
  wd: {command: x, working_dir: /nonexistent-podmesh}
  hosts: {command: x, volumes: [".:/etc/hosts"]}
  devs: {command: x, volumes: [".:/dev/shm/x:ro"]}
  many: {command: x, deploy: {replicas: 200}}
  more: {command: x, deploy: {replicas: 100}}
`,
			want: `compose.yaml:3: services.wd.working_dir: stat /nonexistent-podmesh: no such file or directory
compose.yaml:7: services.more.deploy.replicas: 303 pods in all up to this service, but subnet 10.9.0.0/24 has room for 253 (set a larger x-podmesh.subnet)
compose.yaml:4: services.hosts.volumes[0]: target /etc/hosts is the pod's own (its /etc/hosts maps the upstreams to the sidecar; /proc, /sys and /dev are set up by the pod's init)
compose.yaml:5: services.devs.volumes[0]: target /dev/shm/x is the pod's own (its /etc/hosts maps the upstreams to the sidecar; /proc, /sys and /dev are set up by the pod's init)
compose.yaml:1: x-podmesh.registry: "https://reg.example:8501": only http:// is supported (the pods reach the registry through a plain TCP relay)`,
		},
		{
			name: "project mesh subnet",
			yaml: "x-podmesh:\n  subnet: 10.1.2.3/16\nservices:\n  web: {command: x}\n",
			want: `compose.yaml:2: x-podmesh.subnet: 10.1.2.3/16 has host bits set (did you mean 10.1.0.0/16?)`,
		},
		{
			name: "x-podmesh not a mapping",
			yaml: "services:\n  web: {command: x, x-podmesh: [a]}\n",
			want: `compose.yaml:2: services.web.x-podmesh: must be a mapping, not []interface {}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := map[string]string{"compose.yaml": tt.yaml}
			for k, v := range tt.files {
				files[k] = v
			}
			dir := project(t, files)
			p, err := loadHere(t)
			if err == nil {
				t.Fatalf("Load succeeded, want error:\n%s\nproject: %+v", tt.want, p)
			}
			if p != nil {
				t.Errorf("Load returned a project with its error")
			}
			want := strings.ReplaceAll(tt.want, "$DIR", dir)
			if got := err.Error(); got != want {
				t.Errorf("error mismatch\n got:\n%s\nwant:\n%s", got, want)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error %T is not a *FieldError", err)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	project(t, nil)
	_, err := loadHere(t)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want os.ErrNotExist", err)
	}
	if want := "compose: load compose.yaml: open "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q does not start with %q", err, want)
	}
}

func TestLoadCancelled(t *testing.T) {
	project(t, map[string]string{"compose.yaml": "services:\n  web: {command: x}\n"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Load(ctx, "compose.yaml"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Load with a cancelled context: %v", err)
	}
}

func TestDependencyOrder(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"independent services keep file order", "services:\n  c: {command: x}\n  a: {command: x}\n  b: {command: x}\n", []string{"c", "a", "b"}},
		{"chain written backwards", "services:\n  a: {command: x, depends_on: [b]}\n  b: {command: x, depends_on: [c]}\n  c: {command: x}\n", []string{"c", "b", "a"}},
		{"diamond", `services:
  front: {command: x, depends_on: [left, right]}
  left: {command: x, depends_on: [base]}
  right: {command: x, depends_on: [base]}
  base: {command: x}
  other: {command: x}
`, []string{"base", "left", "right", "front", "other"}},
		{"long form", "services:\n  web:\n    command: x\n    depends_on:\n      db: {condition: service_completed_successfully}\n  db: {command: x}\n", []string{"db", "web"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			project(t, map[string]string{"compose.yaml": tt.yaml})
			p, err := loadHere(t)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range p.Services {
				got = append(got, s.Name)
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("order %v, want %v", got, tt.want)
			}
			checkOrder(t, p)
		})
	}
}

// checkOrder fails unless every service comes after all it depends on.
func checkOrder(t testing.TB, p *Project) {
	t.Helper()
	pos := map[string]int{}
	for i, s := range p.Services {
		pos[s.Name] = i
	}
	for i, s := range p.Services {
		for _, d := range s.DependsOn {
			if pos[d.Service] >= i {
				t.Errorf("%s (at %d) comes before its dependency %s (at %d)", s.Name, i, d.Service, pos[d.Service])
			}
		}
	}
}

func TestEnvironmentPrecedence(t *testing.T) {
	t.Setenv("FROM_HOST", "host")
	t.Setenv("SHARED", "host-shared")
	project(t, map[string]string{
		"one.env": "A=one\nB=one\nONLY_ONE=1\nREF=${FROM_HOST}-ref\n",
		"two.env": "B=two\nC=two\n",
		"compose.yaml": `services:
  web:
    command: x
    env_file: [one.env, two.env]
    environment:
      - C=environment
      - FROM_HOST
      - NOT_SET_ANYWHERE_PODMESH
      - EMPTY=
`,
	})
	p, err := loadHere(t)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(p.Services[0].Environment, " ")
	// env_files in order (two.env over one.env), then environment over both; a bare name takes
	// the launcher's value and is left out when unset; sorted by key.
	want := "A=one B=two C=environment EMPTY= FROM_HOST=host ONLY_ONE=1 REF=host-ref"
	if got != want {
		t.Errorf("environment\n got: %s\nwant: %s", got, want)
	}
}

func TestWarnings(t *testing.T) {
	project(t, map[string]string{"compose.yaml": `services:
  web:
    command: x
    depends_on: [batch]
    healthcheck: {test: [CMD, x], interval: 1s, timeout: 5s}
    deploy: {resources: {limits: {cpus: 4096}}}
  batch: {command: x, deploy: {replicas: 0}}
  open: {command: x, x-podmesh: {port: 80, expose: "0.0.0.0:8080"}}
  off: {command: x, deploy: {replicas: 0}, x-podmesh: {port: 80, expose: 8081}}
`})
	p, err := loadHere(t)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`compose.yaml:4: services.web.depends_on: depends on "batch", which has 0 replicas`,
		`compose.yaml:8: services.open.x-podmesh.expose: 0.0.0.0:8080 listens on every interface of the host: anyone who reaches the host reaches "open"`,
		`compose.yaml:9: services.off.x-podmesh.expose: off is exposed but has 0 replicas`,
		"compose.yaml:6: services.web.deploy.resources.limits.cpus: 4096 is more than this machine's",
		"compose.yaml:5: services.web.healthcheck.timeout: 5s is longer than the interval 1s",
	}
	if len(p.Warnings) != len(want) {
		t.Fatalf("warnings %q, want %d", p.Warnings, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(p.Warnings[i], w) {
			t.Errorf("warning %d = %q, want prefix %q", i, p.Warnings[i], w)
		}
	}
}

func TestProjectNameFromDirectory(t *testing.T) {
	dir := project(t, map[string]string{"My Shop_2/compose.yaml": "services:\n  web: {command: x}\n"})
	p, err := Load(testContext(t), filepath.Join(dir, "My Shop_2", "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "myshop_2" {
		t.Errorf("project name %q, want %q (the directory name, sanitised as compose does)", p.Name, "myshop_2")
	}
	if p.Dir != filepath.Join(dir, "My Shop_2") {
		t.Errorf("Dir %q", p.Dir)
	}
}

func TestTraceTarget(t *testing.T) {
	for in, want := range map[string]string{
		"jaeger:4318":                  "jaeger:4318",
		"http://127.0.0.1:4318":        "127.0.0.1:4318",
		"http://c:4318/v1/traces":      "c:4318",
		"http://[::1]:4318":            "[::1]:4318",
		"https://c:4318":               "",
		"c":                            "",
		"http://c":                     "",
		":4318":                        "",
		"":                             "",
		"grpc://collector.example:443": "",
	} {
		got, err := TraceTarget(in)
		if (err != nil) != (want == "") || got != want {
			t.Errorf("TraceTarget(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

package compose

import (
	"net/netip"
	"syscall"
	"time"
)

// Project is a validated Compose file: every service it describes, in dependency order.
type Project struct {
	Name     string      // top-level `name:` or the directory name, sanitised
	Dir      string      // absolute directory of the compose file
	File     string      // absolute path of the compose file
	Services []Service   // dependency order: a service comes after everything it depends_on
	Mesh     ProjectMesh // top-level x-podmesh block
	// Warnings are problems that do not stop the project (warn-only checks), each naming the
	// file, line and field like an error.
	Warnings []string
}

// Service returns the named service, or false.
func (p *Project) Service(name string) (*Service, bool) {
	for i := range p.Services {
		if p.Services[i].Name == name {
			return &p.Services[i], true
		}
	}
	return nil, false
}

// ProjectMesh is the optional top-level x-podmesh block.
type ProjectMesh struct {
	Subnet   netip.Prefix // pod addresses; default 10.89.0.0/16
	Bridge   string       // bridge interface name; default "podmesh0"
	Registry string       // registry URL; "" = the launcher starts its own
	// DefaultPolicy decides calls between services that no intention allows: "allow" (the
	// default) or "deny". Under deny only the declared edges (x-podmesh.upstreams, and the
	// ingress to its exposed services) are allowed: the launcher creates an allow intention
	// for each, and starts its own registry with that default.
	DefaultPolicy string
	// TraceEndpoint is the trace collector (OTLP/HTTP, host:port or http://host:port) the
	// sidecars send spans to, through the launcher's relay; `launcher up -trace-endpoint`
	// overrides it. "" = no tracing.
	TraceEndpoint string
}

// Default intention policies (ProjectMesh.DefaultPolicy).
const (
	PolicyAllow = "allow"
	PolicyDeny  = "deny"
)

// Service is one service of the project; each replica of it runs as its own pod.
type Service struct {
	Name            string
	Command         []string // entrypoint + command, resolved; never empty
	Environment     []string // "K=V", env_file first then environment, sorted by key
	WorkingDir      string   // "" = the compose file's dir
	User            string   // "" | "uid" | "uid:gid" | "name" | "name:group"
	DependsOn       []Dependency
	Healthcheck     *Healthcheck // nil = none (healthcheck.disable true also gives nil)
	Replicas        int          // deploy.replicas, default 1, 0 allowed (= defined but not started)
	Limits          Limits
	Restart         RestartPolicy
	Volumes         []Mount // bind mounts only
	StopSignal      syscall.Signal
	StopGracePeriod time.Duration
	Mesh            Mesh // x-podmesh block
}

// Meshed reports whether the service serves through the mesh (x-podmesh.port is set). A
// service without a port may still call upstreams.
func (s *Service) Meshed() bool { return s.Mesh.Port != 0 }

// Dependency is one depends_on entry.
type Dependency struct {
	Service   string
	Condition string // ConditionStarted | ConditionHealthy | ConditionCompleted
}

// depends_on conditions.
const (
	ConditionStarted   = "service_started"
	ConditionHealthy   = "service_healthy"
	ConditionCompleted = "service_completed_successfully"
)

// Healthcheck is a service's health check, with compose defaults applied.
type Healthcheck struct {
	Test        []string      // ["CMD", ...] | ["CMD-SHELL", "..."]
	Interval    time.Duration // default 30s
	Timeout     time.Duration // default 30s
	StartPeriod time.Duration
	Retries     int // default 3
}

// Limits are the resource limits of one pod (deploy.resources.limits).
type Limits struct {
	NanoCPUs    int64 // cpus * 1e9, 0 = unlimited
	MemoryBytes int64 // 0 = unlimited
	Pids        int64 // 0 = unlimited
}

// RestartPolicy says when a pod's app is restarted after it exits.
type RestartPolicy struct {
	Condition   string        // RestartNone | RestartOnFailure | RestartAny; default "any"
	Delay       time.Duration // initial backoff, default 1s
	MaxAttempts int           // 0 = unlimited
	Window      time.Duration // how long a run must last to count as stable and reset backoff; default 10s
}

// Restart conditions.
const (
	RestartNone      = "none"
	RestartOnFailure = "on-failure"
	RestartAny       = "any"
)

// Mount is a bind mount from the host into the pod.
type Mount struct {
	Source   string // absolute host path
	Target   string // absolute path in the pod
	ReadOnly bool
}

// Mesh is a service's x-podmesh block.
type Mesh struct {
	Port      int    // the app's port inside the pod (required when the service is meshed)
	Protocol  string // "tcp" | "http" | "http2" | "grpc"; default "http"
	Upstreams []Upstream
	Tags      []string
	Meta      map[string]string
	// Expose is a host address (x-podmesh.expose: "127.0.0.1:8080", or a port alone for
	// loopback) where the launcher's ingress sidecar, in the host's network namespace,
	// forwards to the service through the mesh: the supported way in from the host, since
	// compose `ports` are not. Invalid when not set.
	Expose netip.AddrPort
}

// Upstream is a service this one calls through its sidecar.
type Upstream struct {
	Name     string         // the upstream service's name
	External bool           // not a service of this project (`external: true`)
	Policy   map[string]any // per-upstream sidecar policy, passed verbatim into the sidecar's YAML config
}

// UpstreamPolicyKeys are the keys an upstream's mapping may hold besides name and external:
// the per-upstream keys of the sidecar's YAML configuration (sidecar.Upstream), except
// listen, which the launcher chooses. The values are checked by the sidecar's own loader
// before anything starts (launcher/pod CheckSidecarConfig).
var UpstreamPolicyKeys = []string{
	"protocol", "lb", "hash_on", "connect_timeout", "timeout", "per_try_timeout",
	"retries", "retry_on", "breakers", "retry_budget", "outlier",
}

// Defaults, applied in one place (withDefaults).
const (
	DefaultBridge          = "podmesh0"
	DefaultProtocol        = "http"
	DefaultStopGracePeriod = 10 * time.Second
	DefaultRestartDelay    = time.Second
	DefaultRestartWindow   = 10 * time.Second
	DefaultHealthInterval  = 30 * time.Second
	DefaultHealthTimeout   = 30 * time.Second
	DefaultHealthRetries   = 3
)

// DefaultSubnet is the pod subnet when x-podmesh.subnet is not set.
var DefaultSubnet = netip.MustParsePrefix("10.89.0.0/16")

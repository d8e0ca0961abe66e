package compose

import (
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Limits below these are refused: they are almost always a unit mistake ("memory: 64" for
// 64 MiB), and the pod could not start anyway.
const (
	// MinMemoryBytes: the memory limit is on the pod cgroup, which also holds the sidecar (a Go
	// program of about 10 MiB resident) and the pod's init.
	MinMemoryBytes = 16 << 20
	// MinNanoCPUs: the kernel's smallest CFS quota is 1ms; the launcher uses a 100ms period.
	MinNanoCPUs = 10_000_000
	// MinPids: pids.max counts threads, and the pod's init, the sidecar and a Go app together
	// start more than a dozen.
	MinPids = 16
)

// check is one named validation rule, in the style of runc's libcontainer/configs/validate:
// each returns every problem it finds, and Load reports them all together.
type check struct {
	name string
	fn   func(v *validator, p *Project)
}

// checks are the hard errors, in the order they are reported.
var checks = []check{
	{"service names", checkNames},
	{"command", checkCommand},
	{"working_dir", checkWorkingDir},
	{"user", checkUser},
	{"depends_on", checkDependsOn},
	{"dependency cycles", checkCycles},
	{"healthcheck", checkHealthcheck},
	{"replicas", checkReplicas},
	{"limits", checkLimits},
	{"restart", checkRestart},
	{"volumes", checkVolumes},
	{"stop", checkStop},
	{"x-podmesh", checkMesh},
	{"upstreams", checkUpstreams},
	{"expose", checkExpose},
	{"project x-podmesh", checkProjectMesh},
}

// warnings do not fail the load; they are returned in Project.Warnings.
var warnings = []check{
	{"zero replicas", warnZeroReplicas},
	{"exposed on every interface", warnExposeWildcard},
	{"cpus above the machine", warnCPUs},
	{"healthcheck timeout", warnHealthTimeout},
}

type validator struct {
	c        *converter
	errs     []*FieldError
	warnings []string
	warn     bool
}

func (v *validator) fail(path, format string, args ...any) {
	e := &FieldError{File: v.c.file, Line: v.c.w.lineOf(path), Path: path, Msg: fmt.Sprintf(format, args...)}
	if v.warn {
		v.warnings = append(v.warnings, e.Error())
		return
	}
	v.errs = append(v.errs, e)
}

// validate runs the checks on p, then (when they pass) applies the defaults and the warn-only
// checks, and puts the services in dependency order.
func validate(c *converter, p *Project) []*FieldError {
	v := &validator{c: c}
	for _, ch := range checks {
		ch.fn(v, p)
	}
	errs := append(c.errs, v.errs...)
	if len(errs) > 0 {
		return errs
	}
	withDefaults(p)
	v.warn = true
	for _, ch := range warnings {
		ch.fn(v, p)
	}
	p.Warnings = v.warnings
	p.Services = dependencyOrder(p.Services)
	return nil
}

// withDefaults fills every optional field the file left unset. It is the only place defaults
// are applied (deploy.replicas, whose zero is meaningful, is set during conversion).
func withDefaults(p *Project) {
	if !p.Mesh.Subnet.IsValid() {
		p.Mesh.Subnet = DefaultSubnet
	}
	if p.Mesh.Bridge == "" {
		p.Mesh.Bridge = DefaultBridge
	}
	if p.Mesh.DefaultPolicy == "" {
		p.Mesh.DefaultPolicy = PolicyAllow
	}
	for i := range p.Services {
		s := &p.Services[i]
		if s.StopSignal == 0 {
			s.StopSignal = syscall.SIGTERM
		}
		if s.StopGracePeriod == 0 {
			s.StopGracePeriod = DefaultStopGracePeriod
		}
		if s.Restart.Condition == "" {
			s.Restart.Condition = RestartAny
		}
		if s.Restart.Delay == 0 {
			s.Restart.Delay = DefaultRestartDelay
		}
		if s.Restart.Window == 0 {
			s.Restart.Window = DefaultRestartWindow
		}
		if h := s.Healthcheck; h != nil {
			if h.Interval == 0 {
				h.Interval = DefaultHealthInterval
			}
			if h.Timeout == 0 {
				h.Timeout = DefaultHealthTimeout
			}
			if h.Retries == 0 {
				h.Retries = DefaultHealthRetries
			}
		}
		if s.Mesh.Protocol == "" {
			s.Mesh.Protocol = DefaultProtocol
		}
	}
}

func svcPath(s *Service, field string) string {
	if field == "" {
		return "services." + s.Name
	}
	return "services." + s.Name + "." + field
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// normaliseName is how a service name reads as a hostname: case-insensitive, and compose's
// usual underscore written as a dash.
func normaliseName(n string) string {
	return strings.ReplaceAll(strings.ToLower(n), "_", "-")
}

func checkNames(v *validator, p *Project) {
	seen := map[string]string{}
	for i := range p.Services {
		s := &p.Services[i]
		if !dnsLabel.MatchString(s.Name) {
			hint := ""
			if n := normaliseName(s.Name); dnsLabel.MatchString(n) {
				hint = fmt.Sprintf("; try %q", n)
			}
			v.fail(svcPath(s, ""), "invalid service name %q: it becomes a hostname, so it must be a DNS label (lowercase letters, digits and '-', at most 63, not starting or ending with '-')%s", s.Name, hint)
		}
		n := normaliseName(s.Name)
		if other, ok := seen[n]; ok {
			v.fail(svcPath(s, ""), "service name %q is the same hostname as service %q", s.Name, other)
			continue
		}
		seen[n] = s.Name
	}
}

func checkCommand(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		switch {
		case len(s.Command) == 0:
			v.fail(svcPath(s, "command"), "empty: set command (or entrypoint) to the program to run")
		case s.Command[0] == "":
			v.fail(svcPath(s, "command"), "the program name is empty")
		}
	}
}

// checkWorkingDir: a working_dir must be an existing directory (the pod sees the host's
// file system), or the app fails to start, over and over, with only a log line to say why.
func checkWorkingDir(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		if s.WorkingDir == "" {
			continue
		}
		fi, err := os.Stat(s.WorkingDir)
		switch {
		case err != nil:
			v.fail(svcPath(s, "working_dir"), "%v", err)
		case !fi.IsDir():
			v.fail(svcPath(s, "working_dir"), "%s is not a directory", s.WorkingDir)
		}
	}
}

var userRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$`)

func checkUser(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		if s.User != "" && !userRe.MatchString(s.User) {
			v.fail(svcPath(s, "user"), "invalid user %q (want uid, uid:gid, name or name:group)", s.User)
		}
	}
}

func checkDependsOn(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		for _, d := range s.DependsOn {
			path := svcPath(s, "depends_on."+d.Service)
			if _, ok := v.c.w.lines[path]; !ok {
				path = svcPath(s, "depends_on")
			}
			t, ok := p.Service(d.Service)
			switch {
			case !ok:
				v.fail(path, "unknown service %q", d.Service)
			case d.Condition == ConditionHealthy && t.Healthcheck == nil && t.Mesh.Port == 0:
				// A meshed service without one is healthy once its port accepts connections.
				v.fail(path, "condition %s but service %q has no healthcheck (nor x-podmesh.port, whose TCP check would do)", d.Condition, d.Service)
			}
		}
	}
}

// checkCycles reports each dependency cycle once, named in full: "a -> b -> a".
func checkCycles(v *validator, p *Project) {
	const (
		unvisited = iota
		onStack
		done
	)
	state := map[string]int{}
	var stack []string
	reported := map[string]bool{}
	var visit func(name string)
	visit = func(name string) {
		state[name] = onStack
		stack = append(stack, name)
		s, _ := p.Service(name)
		for _, d := range s.DependsOn {
			if _, ok := p.Service(d.Service); !ok {
				continue // checkDependsOn reports it
			}
			switch state[d.Service] {
			case unvisited:
				visit(d.Service)
			case onStack:
				start := 0
				for i, n := range stack {
					if n == d.Service {
						start = i
					}
				}
				cycle := append(append([]string{}, stack[start:]...), d.Service)
				key := canonicalCycle(cycle[:len(cycle)-1])
				if !reported[key] {
					reported[key] = true
					v.fail(svcPath(s, "depends_on"), "dependency cycle: %s", strings.Join(cycle, " -> "))
				}
			}
		}
		stack = stack[:len(stack)-1]
		state[name] = done
	}
	for _, s := range p.Services {
		if state[s.Name] == unvisited {
			visit(s.Name)
		}
	}
}

// canonicalCycle rotates a cycle to start at its smallest name, so each is reported once.
func canonicalCycle(c []string) string {
	min := 0
	for i := range c {
		if c[i] < c[min] {
			min = i
		}
	}
	return strings.Join(append(append([]string{}, c[min:]...), c[:min]...), " ")
}

func checkHealthcheck(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		h := s.Healthcheck
		if h == nil {
			continue
		}
		path := svcPath(s, "healthcheck")
		switch {
		case len(h.Test) == 0:
			v.fail(path+".test", "required (or set disable: true)")
		case h.Test[0] == "CMD" && (len(h.Test) < 2 || h.Test[1] == ""):
			v.fail(path+".test", "CMD needs a program: [\"CMD\", \"program\", \"args\"...]")
		case h.Test[0] == "CMD-SHELL" && (len(h.Test) != 2 || strings.TrimSpace(h.Test[1]) == ""):
			v.fail(path+".test", "CMD-SHELL needs exactly one shell command string")
		case h.Test[0] != "CMD" && h.Test[0] != "CMD-SHELL":
			v.fail(path+".test", "must start with CMD, CMD-SHELL or NONE, not %q", h.Test[0])
		}
		positive := func(field string, d time.Duration) {
			if v.c.set[path+"."+field] && d <= 0 {
				v.fail(path+"."+field, "%v must be positive", d)
			}
		}
		positive("interval", h.Interval)
		positive("timeout", h.Timeout)
		if h.StartPeriod < 0 {
			v.fail(path+".start_period", "%v must not be negative", h.StartPeriod)
		}
		if v.c.set[path+".retries"] && h.Retries < 1 {
			v.fail(path+".retries", "%d must be at least 1", h.Retries)
		}
	}
}

func checkReplicas(v *validator, p *Project) {
	subnet := p.Mesh.Subnet
	if !subnet.IsValid() || !subnet.Addr().Is4() || subnet.Bits() > 30 {
		subnet = DefaultSubnet // an invalid subnet is reported by its own check
	}
	// Every replica is a pod with an address of its own; the network address, the bridge's
	// and the broadcast address are not for pods.
	capacity := (1 << (32 - subnet.Bits())) - 3
	total := 0
	for i := range p.Services {
		s := &p.Services[i]
		if s.Replicas < 0 {
			v.fail(svcPath(s, "deploy.replicas"), "%d must not be negative", s.Replicas)
			continue
		}
		total += s.Replicas
		if total > capacity && total-s.Replicas <= capacity {
			v.fail(svcPath(s, "deploy.replicas"), "%d pods in all up to this service, but subnet %s has room for %d (set a larger x-podmesh.subnet)", total, subnet, capacity)
		}
	}
}

func checkLimits(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		path := svcPath(s, "deploy.resources.limits.")
		l := s.Limits
		if v.c.set[path+"cpus"] {
			switch {
			case l.NanoCPUs <= 0:
				v.fail(path+"cpus", "%g must be positive (leave it out for no limit)", float64(l.NanoCPUs)/1e9)
			case l.NanoCPUs < MinNanoCPUs:
				v.fail(path+"cpus", "%g is below the minimum %g (the kernel's smallest CPU quota is 1ms per 100ms)", float64(l.NanoCPUs)/1e9, float64(MinNanoCPUs)/1e9)
			}
		}
		if v.c.set[path+"memory"] {
			switch {
			case l.MemoryBytes <= 0:
				v.fail(path+"memory", "%d must be positive (leave it out for no limit)", l.MemoryBytes)
			case l.MemoryBytes < MinMemoryBytes:
				v.fail(path+"memory", "%d bytes is below the minimum %d (16 MiB: the pod's sidecar and init share the limit)", l.MemoryBytes, MinMemoryBytes)
			}
		}
		if v.c.set[path+"pids"] {
			switch {
			case l.Pids <= 0:
				v.fail(path+"pids", "%d must be positive (leave it out for no limit)", l.Pids)
			case l.Pids < MinPids:
				v.fail(path+"pids", "%d is below the minimum %d (pids counts the threads of the pod's init, sidecar and app)", l.Pids, MinPids)
			}
		}
	}
}

func checkRestart(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		path := svcPath(s, "deploy.restart_policy.")
		r := s.Restart
		switch r.Condition {
		case "", RestartNone, RestartOnFailure, RestartAny:
		default:
			v.fail(path+"condition", "invalid condition %q (want none, on-failure or any)", r.Condition)
		}
		if v.c.set[path+"delay"] && r.Delay <= 0 {
			v.fail(path+"delay", "%v must be positive", r.Delay)
		}
		if v.c.set[path+"window"] && r.Window <= 0 {
			v.fail(path+"window", "%v must be positive", r.Window)
		}
	}
}

func checkVolumes(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		targets := map[string]int{}
		for j, m := range s.Volumes {
			idx := v.c.mountIndex[svcPath(s, "")][j]
			path := fmt.Sprintf("%s[%d]", svcPath(s, "volumes"), idx)
			if fi, err := os.Stat(m.Source); err != nil {
				if os.IsNotExist(err) {
					v.fail(path, "bind source %s does not exist", m.Source)
				} else {
					v.fail(path, "bind source: %v", err)
				}
			} else if !fi.IsDir() && !fi.Mode().IsRegular() {
				v.fail(path, "bind source %s is neither a directory nor a regular file", m.Source)
			}
			switch {
			case !filepath.IsAbs(m.Target):
				v.fail(path, "target %q must be an absolute path", m.Target)
			case filepath.Clean(m.Target) == "/":
				v.fail(path, "target must not be /")
			case podOwned(filepath.Clean(m.Target)):
				v.fail(path, "target %s is the pod's own (its /etc/hosts maps the upstreams to the sidecar; /proc, /sys and /dev are set up by the pod's init)", filepath.Clean(m.Target))
			}
			t := filepath.Clean(m.Target)
			if k, ok := targets[t]; ok {
				v.fail(path, "target %s is already mounted by volumes[%d]", t, k)
			}
			targets[t] = idx
		}
	}
}

// podOwned reports whether a mount target is a file or tree the pod's init sets up itself.
func podOwned(target string) bool {
	switch target {
	case "/etc/hosts", "/etc/hostname":
		return true
	}
	for _, d := range []string{"/proc", "/sys", "/dev"} {
		if target == d || strings.HasPrefix(target, d+"/") {
			return true
		}
	}
	return false
}

func checkStop(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		if v.c.set[svcPath(s, "stop_grace_period")] && s.StopGracePeriod <= 0 {
			v.fail(svcPath(s, "stop_grace_period"), "%v must be positive", s.StopGracePeriod)
		}
	}
}

// Protocols the sidecar proxies.
var protocols = map[string]bool{"tcp": true, "http": true, "http2": true, "grpc": true}

func checkMesh(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		path := svcPath(s, "x-podmesh.")
		m := s.Mesh
		if v.c.set[path+"port"] && (m.Port < 1 || m.Port > 65535) {
			v.fail(path+"port", "%d is out of range 1-65535", m.Port)
		}
		if m.Protocol != "" && !protocols[m.Protocol] {
			v.fail(path+"protocol", "%q is not one of tcp, http, http2, grpc", m.Protocol)
		}
		for j, t := range m.Tags {
			if strings.TrimSpace(t) == "" {
				v.fail(fmt.Sprintf("%stags[%d]", path, j), "empty tag")
			}
		}
		keys := make([]string, 0, len(m.Meta))
		for k := range m.Meta {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if !metaKey.MatchString(k) {
				v.fail(path+"meta."+k, "invalid meta key %q (letters, digits, '_' and '-', at most 128)", k)
			}
		}
	}
}

// Consul's rule for service meta keys.
var metaKey = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

var dnsName = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

func checkUpstreams(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		seen := map[string]int{}
		for j, u := range s.Mesh.Upstreams {
			path := fmt.Sprintf("%s[%d]", svcPath(s, "x-podmesh.upstreams"), j)
			if u.Name == "" {
				continue // reported by the converter
			}
			if k, ok := seen[u.Name]; ok {
				v.fail(path, "upstream %q is already listed at upstreams[%d]", u.Name, k)
				continue
			}
			seen[u.Name] = j
			checkPolicy(v, path, u.Policy)
			t, inProject := p.Service(u.Name)
			switch {
			case u.External && inProject:
				v.fail(path, "upstream %q is marked external but is a service of this project", u.Name)
			case u.External:
				if !dnsName.MatchString(u.Name) || len(u.Name) > 253 {
					v.fail(path, "external upstream %q is not a valid hostname", u.Name)
				}
			case !inProject:
				v.fail(path, "upstream %q is not a service of this project (mark it `external: true` if it is registered elsewhere)", u.Name)
			case t.Name == s.Name:
				v.fail(path, "service %q lists itself as an upstream", u.Name)
			case t.Mesh.Port == 0:
				v.fail(path, "upstream %q has no x-podmesh.port, so nothing serves it through the mesh", u.Name)
			}
		}
	}
}

// checkPolicy checks the keys of an upstream's policy against the sidecar's upstream keys;
// the sidecar's own loader checks the values before anything starts.
func checkPolicy(v *validator, path string, policy map[string]any) {
	keys := make([]string, 0, len(policy))
	for k := range policy {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case k == "listen":
			v.fail(path+"."+k, "set by the launcher: the app calls the upstream by its name")
		case !slices.Contains(UpstreamPolicyKeys, k):
			v.fail(path+"."+k, "unknown upstream policy key %q (want name, external or one of %s)", k, strings.Join(UpstreamPolicyKeys, ", "))
		}
	}
}

// checkExpose: an exposed service serves through the mesh, and each host address is
// exposed once.
func checkExpose(v *validator, p *Project) {
	seen := map[netip.AddrPort]string{}
	for i := range p.Services {
		s := &p.Services[i]
		e := s.Mesh.Expose
		if !e.IsValid() {
			continue
		}
		path := svcPath(s, "x-podmesh.expose")
		if s.Mesh.Port == 0 {
			v.fail(path, "%s: only a service with x-podmesh.port can be exposed (the ingress reaches it through its sidecar)", e)
			continue
		}
		if other, ok := seen[e]; ok {
			v.fail(path, "%s is already exposed by service %q", e, other)
			continue
		}
		seen[e] = s.Name
	}
}

func checkProjectMesh(v *validator, p *Project) {
	m := p.Mesh
	if m.Subnet.IsValid() {
		switch {
		case !m.Subnet.Addr().Is4():
			v.fail("x-podmesh.subnet", "%s: only IPv4 subnets are supported", m.Subnet)
		case m.Subnet.Bits() > 29:
			v.fail("x-podmesh.subnet", "%s is too small (at most /29: the bridge takes one address)", m.Subnet)
		case m.Subnet.Masked() != m.Subnet:
			v.fail("x-podmesh.subnet", "%s has host bits set (did you mean %s?)", m.Subnet, m.Subnet.Masked())
		}
	}
	if b := m.Bridge; b != "" {
		if len(b) > 15 || b == "." || b == ".." || strings.ContainsAny(b, "/: \t\n") {
			v.fail("x-podmesh.bridge", "invalid interface name %q (at most 15 characters, no '/', ':' or spaces)", b)
		}
	}
	if r := m.Registry; r != "" {
		u, err := url.Parse(r)
		switch {
		case err != nil || u.Host == "":
			v.fail("x-podmesh.registry", "invalid URL %q (want http://host:port)", r)
		case u.Scheme != "http":
			v.fail("x-podmesh.registry", "%q: only http:// is supported (the pods reach the registry through a plain TCP relay)", r)
		case u.Port() == "":
			v.fail("x-podmesh.registry", "%q has no port (want http://host:port)", r)
		}
	}
}

func warnZeroReplicas(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		for _, d := range s.DependsOn {
			if t, ok := p.Service(d.Service); ok && t.Replicas == 0 {
				v.fail(svcPath(s, "depends_on"), "depends on %q, which has 0 replicas", d.Service)
			}
		}
		for _, u := range s.Mesh.Upstreams {
			if t, ok := p.Service(u.Name); ok && !u.External && t.Replicas == 0 {
				v.fail(svcPath(s, "x-podmesh.upstreams"), "upstream %q has 0 replicas", u.Name)
			}
		}
	}
}

func warnExposeWildcard(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		if e := s.Mesh.Expose; e.IsValid() && e.Addr().IsUnspecified() {
			v.fail(svcPath(s, "x-podmesh.expose"), "%s listens on every interface of the host: anyone who reaches the host reaches %q", e, s.Name)
		}
		if e := s.Mesh.Expose; e.IsValid() && s.Replicas == 0 {
			v.fail(svcPath(s, "x-podmesh.expose"), "%s is exposed but has 0 replicas", s.Name)
		}
	}
}

func warnCPUs(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		if n := runtime.NumCPU(); s.Limits.NanoCPUs > int64(n)*1e9 {
			v.fail(svcPath(s, "deploy.resources.limits.cpus"), "%g is more than this machine's %d CPUs", float64(s.Limits.NanoCPUs)/1e9, n)
		}
	}
}

func warnHealthTimeout(v *validator, p *Project) {
	for i := range p.Services {
		s := &p.Services[i]
		if h := s.Healthcheck; h != nil && v.c.set[svcPath(s, "healthcheck.timeout")] && h.Timeout > h.Interval {
			v.fail(svcPath(s, "healthcheck.timeout"), "%v is longer than the interval %v", h.Timeout, h.Interval)
		}
	}
}

// dependencyOrder sorts services so each comes after everything it depends on; among the
// services ready at each step, file order decides. The graph is acyclic (checkCycles).
func dependencyOrder(in []Service) []Service {
	index := map[string]int{}
	for i, s := range in {
		index[s.Name] = i
	}
	placed := make([]bool, len(in))
	out := make([]Service, 0, len(in))
	for len(out) < len(in) {
		progressed := false
		for i, s := range in {
			if placed[i] {
				continue
			}
			ready := true
			for _, d := range s.DependsOn {
				if j, ok := index[d.Service]; ok && !placed[j] {
					ready = false
					break
				}
			}
			if ready {
				placed[i] = true
				out = append(out, s)
				progressed = true
				break // restart from the top: file order among the ready ones
			}
		}
		if !progressed { // unreachable after checkCycles; never loop forever
			for i, s := range in {
				if !placed[i] {
					out = append(out, s)
				}
			}
			break
		}
	}
	return out
}

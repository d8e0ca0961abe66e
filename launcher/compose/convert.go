package compose

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"golang.org/x/sys/unix"
)

// converter turns compose-go's model into Services. It only parses: a value that cannot be
// represented is an error here, a value that can but is out of range is left for validate.
type converter struct {
	file string // the path as given to Load, for errors
	dir  string // absolute directory of the file
	w    *walker
	env  types.Mapping // interpolation environment (process env over .env)
	dict map[string]any
	errs []*FieldError
	// set records the optional fields the file set explicitly, so that validate can tell an
	// explicit zero from an absent value before withDefaults fills the absent ones.
	set map[string]bool
	// mountIndex maps each service's Volumes back to their index in the file's volumes list.
	mountIndex map[string][]int
}

func (c *converter) fail(path, format string, args ...any) {
	c.errs = append(c.errs, &FieldError{File: c.file, Line: c.w.lineOf(path), Path: path, Msg: fmt.Sprintf(format, args...)})
}

// item names the i-th element of a list field, or the field itself when it was written as a
// scalar (env_file: .env).
func (c *converter) item(path string, i int) string {
	p := path + "[" + strconv.Itoa(i) + "]"
	if _, ok := c.w.lines[p]; ok {
		return p
	}
	return path
}

func (c *converter) project(name, abs string, cp *types.Project) *Project {
	c.set = map[string]bool{}
	c.mountIndex = map[string][]int{}
	p := &Project{Name: name, Dir: c.dir, File: abs}
	p.Mesh = c.projectMesh(cp.Extensions["x-podmesh"])
	for _, sn := range c.w.order {
		svc, ok := cp.Services[sn]
		if !ok {
			continue
		}
		p.Services = append(p.Services, c.service(svc))
	}
	return p
}

func (c *converter) projectMesh(v any) ProjectMesh {
	var m ProjectMesh
	if v == nil {
		return m
	}
	raw, ok := v.(map[string]any)
	if !ok {
		c.fail("x-podmesh", "must be a mapping, not %T", v)
		return m
	}
	if s, ok := c.str("x-podmesh.subnet", raw["subnet"]); ok && s != "" {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			c.fail("x-podmesh.subnet", "invalid prefix %q (want e.g. 10.89.0.0/16)", s)
		} else {
			m.Subnet = pfx
		}
	}
	m.Bridge, _ = c.str("x-podmesh.bridge", raw["bridge"])
	m.Registry, _ = c.str("x-podmesh.registry", raw["registry"])
	if s, ok := c.str("x-podmesh.default_policy", raw["default_policy"]); ok && s != "" {
		if s != PolicyAllow && s != PolicyDeny {
			c.fail("x-podmesh.default_policy", "must be %q or %q, not %q", PolicyAllow, PolicyDeny, s)
		} else {
			m.DefaultPolicy = s
		}
	}
	if s, ok := c.str("x-podmesh.trace_endpoint", raw["trace_endpoint"]); ok && s != "" {
		if _, err := TraceTarget(s); err != nil {
			c.fail("x-podmesh.trace_endpoint", "%v", err)
		} else {
			m.TraceEndpoint = s
		}
	}
	return m
}

// str reads an optional scalar as a string.
func (c *converter) str(path string, v any) (string, bool) {
	switch v := v.(type) {
	case nil:
		return "", true
	case string:
		return v, true
	case int, int64, uint64, float64, bool:
		return fmt.Sprint(v), true
	}
	c.fail(path, "must be a string, not %T", v)
	return "", false
}

func (c *converter) service(svc types.ServiceConfig) Service {
	base := "services." + svc.Name
	s := Service{Name: svc.Name}

	s.Command = append(append([]string{}, svc.Entrypoint...), svc.Command...)
	s.Environment = c.environment(base, svc)
	s.WorkingDir = svc.WorkingDir
	if s.WorkingDir != "" && !filepath.IsAbs(s.WorkingDir) {
		s.WorkingDir = filepath.Join(c.dir, s.WorkingDir)
	}
	s.User = svc.User

	for target, dep := range svc.DependsOn {
		cond := dep.Condition
		if cond == "" {
			cond = ConditionStarted
		}
		s.DependsOn = append(s.DependsOn, Dependency{Service: target, Condition: cond})
	}
	sort.Slice(s.DependsOn, func(i, j int) bool { return s.DependsOn[i].Service < s.DependsOn[j].Service })

	s.Healthcheck = c.healthcheck(base, svc.HealthCheck)

	s.Replicas = 1
	if svc.Deploy != nil && svc.Deploy.Replicas != nil {
		s.Replicas = *svc.Deploy.Replicas
	}
	s.Limits = c.limits(base, svc)
	s.Restart = c.restart(base, svc)
	s.Volumes = c.volumes(base, svc.Volumes)

	if svc.StopSignal != "" {
		sig, err := parseSignal(svc.StopSignal)
		if err != nil {
			c.fail(base+".stop_signal", "%v", err)
		}
		s.StopSignal = sig
	}
	if svc.StopGracePeriod != nil {
		s.StopGracePeriod = time.Duration(*svc.StopGracePeriod)
		c.set[base+".stop_grace_period"] = true
	}
	s.Mesh = c.mesh(base, svc.Extensions["x-podmesh"])
	return s
}

// environment resolves env_file and environment the way compose does (environment wins, and
// a bare `- NAME` takes NAME from the launcher's environment), as sorted "K=V" pairs.
func (c *converter) environment(base string, svc types.ServiceConfig) []string {
	missing := false
	for i, f := range svc.EnvFiles {
		fi, err := os.Stat(f.Path)
		switch {
		case err != nil && os.IsNotExist(err):
			if bool(f.Required) {
				c.fail(c.item(base+".env_file", i), "%s does not exist", f.Path)
				missing = true
			}
		case err != nil:
			c.fail(c.item(base+".env_file", i), "%v", err)
			missing = true
		case !fi.Mode().IsRegular():
			c.fail(c.item(base+".env_file", i), "%s is not a regular file", f.Path)
			missing = true
		}
	}
	if missing {
		return nil
	}
	one := types.Project{Services: types.Services{svc.Name: svc}, Environment: c.env}
	resolved, err := one.WithServicesEnvironmentResolved(true)
	if err != nil {
		c.fail(base+".env_file", "%v", err)
		return nil
	}
	env := resolved.Services[svc.Name].Environment
	keys := make([]string, 0, len(env))
	for k, v := range env {
		if v != nil { // `- NAME` with NAME unset: compose leaves it out
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k + "=" + *env[k]
	}
	return out
}

func (c *converter) healthcheck(base string, hc *types.HealthCheckConfig) *Healthcheck {
	if hc == nil || hc.Disable {
		return nil
	}
	if len(hc.Test) > 0 && hc.Test[0] == "NONE" {
		return nil
	}
	p := base + ".healthcheck."
	h := &Healthcheck{Test: append([]string{}, hc.Test...)}
	if hc.Interval != nil {
		h.Interval = time.Duration(*hc.Interval)
		c.set[p+"interval"] = true
	}
	if hc.Timeout != nil {
		h.Timeout = time.Duration(*hc.Timeout)
		c.set[p+"timeout"] = true
	}
	if hc.StartPeriod != nil {
		h.StartPeriod = time.Duration(*hc.StartPeriod)
	}
	if hc.Retries != nil {
		if *hc.Retries > math.MaxInt32 {
			c.fail(p+"retries", "%d is too large", *hc.Retries)
		} else {
			h.Retries = int(*hc.Retries)
		}
		c.set[p+"retries"] = true
	}
	return h
}

func (c *converter) limits(base string, svc types.ServiceConfig) Limits {
	var l Limits
	p := base + ".deploy.resources.limits."
	services, _ := c.dict["services"].(map[string]any)
	raw, _ := services[svc.Name].(map[string]any)
	deploy, _ := raw["deploy"].(map[string]any)
	res, _ := deploy["resources"].(map[string]any)
	limits, _ := res["limits"].(map[string]any)
	if v, ok := limits["cpus"]; ok {
		cpus, _ := parseCPUs(v) // precheck rejected unparsable values
		if cpus > 1e6 || cpus < -1e6 || math.IsNaN(cpus) {
			c.fail(p+"cpus", "%v is out of range", v)
		} else {
			l.NanoCPUs = int64(math.Round(cpus * 1e9))
		}
		c.set[p+"cpus"] = true
	}
	if svc.Deploy != nil && svc.Deploy.Resources.Limits != nil {
		l.MemoryBytes = int64(svc.Deploy.Resources.Limits.MemoryBytes)
		l.Pids = svc.Deploy.Resources.Limits.Pids
	}
	if _, ok := limits["memory"]; ok {
		c.set[p+"memory"] = true
	}
	if _, ok := limits["pids"]; ok {
		c.set[p+"pids"] = true
	}
	return l
}

func (c *converter) restart(base string, svc types.ServiceConfig) RestartPolicy {
	var r RestartPolicy
	var rp *types.RestartPolicy
	if svc.Deploy != nil {
		rp = svc.Deploy.RestartPolicy
	}
	switch {
	case svc.Restart != "" && rp != nil:
		c.fail(base+".restart", "conflicts with deploy.restart_policy; set only one")
	case svc.Restart != "":
		mode, n, hasN := strings.Cut(svc.Restart, ":")
		switch {
		case mode == "no" && !hasN:
			r.Condition = RestartNone
		case (mode == "always" || mode == "unless-stopped") && !hasN:
			r.Condition = RestartAny
		case mode == "on-failure":
			r.Condition = RestartOnFailure
			if hasN {
				attempts, err := strconv.Atoi(n)
				if err != nil || attempts < 0 {
					c.fail(base+".restart", "invalid attempt count %q in %q", n, svc.Restart)
				}
				r.MaxAttempts = attempts
			}
		default:
			c.fail(base+".restart", "invalid value %q (want no, always, unless-stopped, on-failure or on-failure:N)", svc.Restart)
		}
	case rp != nil:
		p := base + ".deploy.restart_policy."
		r.Condition = rp.Condition
		if rp.Delay != nil {
			r.Delay = time.Duration(*rp.Delay)
			c.set[p+"delay"] = true
		}
		if rp.Window != nil {
			r.Window = time.Duration(*rp.Window)
			c.set[p+"window"] = true
		}
		if rp.MaxAttempts != nil {
			if *rp.MaxAttempts > math.MaxInt32 {
				c.fail(p+"max_attempts", "%d is too large", *rp.MaxAttempts)
			} else {
				r.MaxAttempts = int(*rp.MaxAttempts)
			}
		}
	}
	return r
}

func (c *converter) volumes(base string, vols []types.ServiceVolumeConfig) []Mount {
	var out []Mount
	for i, v := range vols {
		p := base + ".volumes[" + strconv.Itoa(i) + "]"
		switch {
		case v.Type == types.VolumeTypeVolume && v.Source == "":
			c.fail(p, "anonymous volume %s is not supported: bind-mount a host directory (./dir:%s)", v.Target, v.Target)
			continue
		case v.Type == types.VolumeTypeVolume:
			c.fail(p, "named volume %q is not supported: bind-mount a host directory (./%s:%s)", v.Source, v.Source, v.Target)
			continue
		case v.Type != types.VolumeTypeBind:
			c.fail(p, "volume type %q is not supported: only bind mounts are", v.Type)
			continue
		}
		if v.Bind != nil && v.Bind.SELinux != "" {
			c.fail(p, "option %q is not supported (only ro and rw are)", v.Bind.SELinux)
		}
		if v.Bind != nil && v.Bind.Propagation != "" {
			c.fail(p, "option %q is not supported (only ro and rw are)", v.Bind.Propagation)
		}
		out = append(out, Mount{Source: v.Source, Target: v.Target, ReadOnly: v.ReadOnly})
		c.mountIndex[base] = append(c.mountIndex[base], i)
	}
	return out
}

// parseSignal reads SIGTERM, TERM, term or a number.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, fmt.Errorf("signal number %d out of range 1-64", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig := unix.SignalNum(name)
	if sig == 0 {
		return 0, fmt.Errorf("unknown signal %q", s)
	}
	return sig, nil
}

func (c *converter) mesh(base string, v any) Mesh {
	var m Mesh
	if v == nil {
		return m
	}
	p := base + ".x-podmesh"
	raw, ok := v.(map[string]any)
	if !ok {
		c.fail(p, "must be a mapping, not %T", v)
		return m
	}
	if pv, ok := raw["port"]; ok && pv != nil {
		port, err := toInt(pv)
		if err != nil {
			c.fail(p+".port", "not a port number: %v", pv)
		}
		m.Port = port
		c.set[p+".port"] = true
	}
	m.Protocol, _ = c.str(p+".protocol", raw["protocol"])
	if ev, ok := raw["expose"]; ok && ev != nil {
		m.Expose = c.expose(p+".expose", ev)
		c.set[p+".expose"] = true
	}
	if uv, ok := raw["upstreams"]; ok && uv != nil {
		list, ok := uv.([]any)
		if !ok {
			c.fail(p+".upstreams", "must be a list, not %T", uv)
		}
		for i, item := range list {
			ip := fmt.Sprintf("%s.upstreams[%d]", p, i)
			switch item := item.(type) {
			case string:
				m.Upstreams = append(m.Upstreams, Upstream{Name: item})
			case map[string]any:
				u := Upstream{}
				name, ok := item["name"].(string)
				if !ok || name == "" {
					c.fail(ip+".name", "required: the upstream service's name")
				}
				u.Name = name
				switch ext := item["external"].(type) {
				case nil:
				case bool:
					u.External = ext
				case string:
					b, err := strconv.ParseBool(ext)
					if err != nil {
						c.fail(ip+".external", "not a boolean: %q", ext)
					}
					u.External = b
				default:
					c.fail(ip+".external", "not a boolean: %v", ext)
				}
				for k, pv := range item {
					if k == "name" || k == "external" {
						continue
					}
					if u.Policy == nil {
						u.Policy = map[string]any{}
					}
					u.Policy[k] = pv
				}
				m.Upstreams = append(m.Upstreams, u)
			default:
				c.fail(ip, "must be a service name or a mapping with name, not %T", item)
			}
		}
	}
	if tv, ok := raw["tags"]; ok && tv != nil {
		list, ok := tv.([]any)
		if !ok {
			c.fail(p+".tags", "must be a list, not %T", tv)
		}
		for i, t := range list {
			s, ok := c.str(fmt.Sprintf("%s.tags[%d]", p, i), t)
			if ok {
				m.Tags = append(m.Tags, s)
			}
		}
	}
	if mv, ok := raw["meta"]; ok && mv != nil {
		mm, ok := mv.(map[string]any)
		if !ok {
			c.fail(p+".meta", "must be a mapping, not %T", mv)
		}
		for k, val := range mm {
			s, ok := c.str(p+".meta."+k, val)
			if !ok {
				continue
			}
			if m.Meta == nil {
				m.Meta = map[string]string{}
			}
			m.Meta[k] = s
		}
	}
	return m
}

// expose parses x-podmesh.expose: "IP:PORT", or a port alone for 127.0.0.1:PORT.
func (c *converter) expose(path string, v any) netip.AddrPort {
	var s string
	switch v := v.(type) {
	case string:
		s = strings.TrimSpace(v)
	case int, int64, uint64, float64:
		s = fmt.Sprint(v)
	default:
		c.fail(path, "must be an address such as 127.0.0.1:8080, not %T", v)
		return netip.AddrPort{}
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 65535 {
			c.fail(path, "port %d is out of range 1-65535", n)
			return netip.AddrPort{}
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(n))
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		c.fail(path, "invalid address %q (want IP:PORT such as 127.0.0.1:8080, or a port alone for loopback)", s)
		return netip.AddrPort{}
	}
	if ap.Port() == 0 {
		c.fail(path, "%q: the port must not be 0", s)
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func toInt(v any) (int, error) {
	switch v := v.(type) {
	case int:
		return v, nil
	case int64:
		if v > math.MaxInt32 || v < math.MinInt32 {
			return 0, fmt.Errorf("out of range")
		}
		return int(v), nil
	case uint64:
		if v > math.MaxInt32 {
			return 0, fmt.Errorf("out of range")
		}
		return int(v), nil
	case float64:
		if v != math.Trunc(v) || v > math.MaxInt32 || v < math.MinInt32 {
			return 0, fmt.Errorf("not an integer")
		}
		return int(v), nil
	case string:
		return strconv.Atoi(strings.TrimSpace(v))
	}
	return 0, fmt.Errorf("unexpected type %T", v)
}

// TraceTarget is the host:port of a trace collector given as host:port or as an http:// URL
// (a path is ignored: the sidecar adds OTLP's /v1/traces).
func TraceTarget(endpoint string) (string, error) {
	rest := endpoint
	if r, ok := strings.CutPrefix(endpoint, "http://"); ok {
		rest, _, _ = strings.Cut(r, "/")
	} else if strings.Contains(endpoint, "://") {
		return "", fmt.Errorf("trace endpoint %q: want host:port or http://host:port", endpoint)
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil || host == "" || port == "" {
		return "", fmt.Errorf("trace endpoint %q: want host:port or http://host:port", endpoint)
	}
	return rest, nil
}

package compose

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/format"
	"gopkg.in/yaml.v3"
)

// compose-go normalises the model and forgets where each key came from, so the keys are
// checked here, on the yaml.v3 node tree, which keeps line numbers. The walk does two jobs: it
// rejects every key podmesh does not support (naming file, line and key), and it records the
// line of every key it accepts so later errors can point at the right line too.

// spec describes what a YAML node may contain.
type spec struct {
	// keys are the keys a mapping may hold. A nil *spec value accepts anything below that key.
	keys map[string]*spec
	// free marks a mapping whose keys are user-defined (service names, depends_on targets):
	// every key is accepted and its value is checked against items.
	free bool
	// items checks each element of a sequence, and each value of a free mapping. Scalars are
	// always accepted (short syntaxes); only mappings are checked against items.
	items *spec
	// ext accepts x-* extension keys (other than those listed in keys) and ignores them.
	ext bool
	// own marks podmesh's own blocks (x-podmesh): a key not listed is unknown, not unsupported.
	own bool
	// mounts marks the volumes list, whose entries must have distinct targets: compose-go
	// would silently keep only the last entry for a target.
	mounts bool
}

var (
	healthcheckSpec = &spec{keys: map[string]*spec{
		"test": nil, "interval": nil, "timeout": nil, "start_period": nil, "retries": nil, "disable": nil,
	}, ext: true}
	deploySpec = &spec{keys: map[string]*spec{
		"replicas": nil,
		"resources": {keys: map[string]*spec{
			"limits": {keys: map[string]*spec{"cpus": nil, "memory": nil, "pids": nil}, ext: true},
		}, ext: true},
		"restart_policy": {keys: map[string]*spec{
			"condition": nil, "delay": nil, "max_attempts": nil, "window": nil,
		}, ext: true},
	}, ext: true}
	serviceMeshSpec = &spec{keys: map[string]*spec{
		"port": nil, "protocol": nil, "upstreams": nil, "tags": nil, "meta": nil, "expose": nil,
	}, own: true}
	serviceSpec = &spec{keys: map[string]*spec{
		"command":     nil,
		"entrypoint":  nil,
		"environment": nil,
		"env_file":    {items: &spec{keys: map[string]*spec{"path": nil, "required": nil}}},
		"working_dir": nil,
		"user":        nil,
		"depends_on":  {free: true, items: &spec{keys: map[string]*spec{"condition": nil}}},
		"healthcheck": healthcheckSpec,
		"deploy":      deploySpec,
		"restart":     nil,
		"volumes": {mounts: true, items: &spec{keys: map[string]*spec{
			"type": nil, "source": nil, "target": nil, "read_only": nil,
		}, ext: true}},
		"stop_signal":       nil,
		"stop_grace_period": nil,
		"x-podmesh":         serviceMeshSpec,
	}, ext: true}
	projectMeshSpec = &spec{keys: map[string]*spec{"subnet": nil, "bridge": nil, "registry": nil, "default_policy": nil, "trace_endpoint": nil}, own: true}
	topSpec         = &spec{keys: map[string]*spec{
		"name":      nil,
		"version":   nil, // obsolete, accepted and ignored as compose does
		"services":  {free: true, items: serviceSpec},
		"x-podmesh": projectMeshSpec,
	}, ext: true}
)

// Why a Compose key is not supported, for the keys users most often carry over from Docker.
// A key missing here is rejected with the bare "not supported by podmesh".
var unsupportedWhy = map[string]string{
	"image":          "services run host binaries; use command",
	"build":          "services run host binaries; use command",
	"pull_policy":    "services run host binaries; use command",
	"platform":       "services run host binaries; use command",
	"ports":          "pods are reached through the mesh; set x-podmesh.port, and x-podmesh.expose for a host address",
	"expose":         "pods are reached through the mesh; set x-podmesh.port",
	"networks":       "each pod gets its own network namespace on the podmesh bridge; see x-podmesh.subnet",
	"network_mode":   "each pod gets its own network namespace on the podmesh bridge",
	"links":          "services reach each other through x-podmesh.upstreams",
	"external_links": "services reach each other through x-podmesh.upstreams",
	"extra_hosts":    "the pod's /etc/hosts maps x-podmesh.upstreams to the sidecar",
	"dns":            "the pod uses the host's resolver",
	"dns_search":     "the pod uses the host's resolver",
	"dns_opt":        "the pod uses the host's resolver",
	"hostname":       "a pod's hostname is its service name",
	"domainname":     "a pod's hostname is its service name",
	"mac_address":    "the launcher assigns pod addresses",
	"container_name": "pods are named after the service and replica",
	"privileged":     "the launcher fixes the pod's isolation",
	"cap_add":        "the app runs without capabilities",
	"cap_drop":       "the app runs without capabilities",
	"security_opt":   "the launcher fixes the pod's isolation",
	"devices":        "the launcher fixes the pod's isolation",
	"pid":            "each pod has its own PID namespace",
	"ipc":            "each pod has its own IPC namespace",
	"uts":            "each pod has its own UTS namespace",
	"userns_mode":    "the launcher fixes the pod's isolation",
	"cgroup":         "the launcher places each pod in its own cgroup",
	"cgroup_parent":  "the launcher places each pod in its own cgroup",
	"secrets":        "bind-mount the file with volumes",
	"configs":        "bind-mount the file with volumes",
	"labels":         "use x-podmesh.meta",
	"logging":        "the launcher captures and rotates logs itself",
	"tmpfs":          "each pod gets a private /tmp",
	"scale":          "use deploy.replicas",
	"cpus":           "use deploy.resources.limits.cpus",
	"mem_limit":      "use deploy.resources.limits.memory",
	"pids_limit":     "use deploy.resources.limits.pids",
	"cpu_quota":      "use deploy.resources.limits.cpus",
	"cpu_period":     "use deploy.resources.limits.cpus",
	"reservations":   "podmesh enforces limits only",
	"profiles":       "every service in the file is part of the project",
	"extends":        "write the service out in full (YAML anchors work)",
	"include":        "put every service in one file",
	"init":           "every pod already runs an init process",
}

// FieldError is a problem with one field of the file. Errors returned by Load are FieldErrors
// (joined with errors.Join when there are several), except I/O errors reading the file.
type FieldError struct {
	File string // the path as given to Load
	Line int    // 0 when unknown
	Path string // dotted key path: services.web.deploy.replicas
	Msg  string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// maxVisits bounds the walk: aliases can make a small document describe an exponentially
// large tree ("billion laughs").
const maxVisits = 1 << 16

// walker checks a document against topSpec and records the line of each key it accepts.
type walker struct {
	file   string
	lines  map[string]int // key path → line of its key
	order  []string       // service names in file order
	errs   []*FieldError
	visits int
}

var errTooComplex = errors.New("document too complex (too many aliased nodes)")

func (w *walker) walkDoc(doc *yaml.Node) error {
	root := doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil
		}
		root = root.Content[0]
	}
	return w.walk(root, topSpec, "")
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (w *walker) record(path string, line int) {
	if _, ok := w.lines[path]; !ok {
		w.lines[path] = line
	}
}

func (w *walker) walk(n *yaml.Node, s *spec, path string) error {
	w.visits++
	if w.visits > maxVisits {
		return errTooComplex
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return nil
		}
		return w.walk(n.Alias, s, path)
	}
	if s == nil {
		return w.recordAll(n, path)
	}
	switch n.Kind {
	case yaml.SequenceNode:
		targets := map[string]int{}
		for i, item := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			w.record(p, item.Line)
			if s.mounts {
				if t := mountTarget(item); t != "" {
					if k, dup := targets[t]; dup {
						w.errs = append(w.errs, &FieldError{File: w.file, Line: item.Line, Path: p, Msg: fmt.Sprintf("target %s is already mounted by volumes[%d]", t, k)})
					} else {
						targets[t] = i
					}
				}
			}
			if err := w.walk(item, s.items, p); err != nil {
				return err
			}
		}
	case yaml.MappingNode:
		seen := map[string]int{}
		var merges []*yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				continue // compose-go's schema validation rejects non-string keys
			}
			if k.Value == "<<" && k.Tag == "!!merge" {
				merges = append(merges, v) // after the mapping's own keys, which win
				continue
			}
			p := join(path, k.Value)
			if first, dup := seen[k.Value]; dup {
				w.errs = append(w.errs, &FieldError{File: w.file, Line: k.Line, Path: p, Msg: fmt.Sprintf("duplicate key (first at line %d)", first)})
				continue
			}
			seen[k.Value] = k.Line
			if s.free {
				w.record(p, k.Line)
				if path == "services" {
					w.order = append(w.order, k.Value)
				}
				if err := w.walk(v, s.items, p); err != nil {
					return err
				}
				continue
			}
			child, ok := s.keys[k.Value]
			if !ok {
				if s.ext && strings.HasPrefix(k.Value, "x-") {
					continue // user extensions, ignored by design (often YAML anchor holders)
				}
				w.unsupported(k, p, s)
				continue
			}
			w.record(p, k.Line)
			if err := w.walk(v, child, p); err != nil {
				return err
			}
		}
		for _, v := range merges {
			if err := w.walkMerge(v, s, path); err != nil {
				return err
			}
		}
	}
	return nil
}

// recordAll records the lines of everything below a key whose content is not checked here
// (environment, x-podmesh.upstreams), so errors about it can still point at the right line.
func (w *walker) recordAll(n *yaml.Node, path string) error {
	w.visits++
	if w.visits > maxVisits {
		return errTooComplex
	}
	switch n.Kind {
	case yaml.AliasNode:
		if n.Alias != nil {
			return w.recordAll(n.Alias, path)
		}
	case yaml.SequenceNode:
		for i, item := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			w.record(p, item.Line)
			if err := w.recordAll(item, p); err != nil {
				return err
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				continue
			}
			if k.Value == "<<" && k.Tag == "!!merge" {
				if err := w.recordAll(v, path); err != nil {
					return err
				}
				continue
			}
			p := join(path, k.Value)
			w.record(p, k.Line)
			if err := w.recordAll(v, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// mountTarget is the target of one volumes entry as compose-go keys it, or "".
func mountTarget(n *yaml.Node) string {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.ScalarNode:
		v, err := format.ParseVolume(n.Value)
		if err != nil || v.Target == "" {
			return ""
		}
		return path.Clean(v.Target)
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == "target" && n.Content[i+1].Kind == yaml.ScalarNode && n.Content[i+1].Value != "" {
				return path.Clean(n.Content[i+1].Value)
			}
		}
	}
	return ""
}

// walkMerge follows a YAML merge key (`<<: *anchor` or `<<: [*a, *b]`).
func (w *walker) walkMerge(v *yaml.Node, s *spec, path string) error {
	if v.Kind == yaml.SequenceNode {
		for _, item := range v.Content {
			if err := w.walk(item, s, path); err != nil {
				return err
			}
		}
		return nil
	}
	return w.walk(v, s, path)
}

func (w *walker) unsupported(k *yaml.Node, path string, s *spec) {
	e := &FieldError{File: w.file, Line: k.Line, Path: path}
	if s.own {
		e.Msg = "unknown key" + suggest(k.Value, s)
	} else if why, ok := unsupportedWhy[k.Value]; ok && why != "" {
		e.Msg = "not supported by podmesh (" + why + ")"
	} else if ok {
		e.Msg = "not supported by podmesh"
	} else {
		e.Msg = "not supported by podmesh" + suggest(k.Value, s)
	}
	w.errs = append(w.errs, e)
}

// suggest returns " (did you mean X?)" when key is a small typo of a supported key.
func suggest(key string, s *spec) string {
	best, bestD := "", 3
	if len(key) >= 3 {
		var prefixed []string
		for k := range s.keys {
			if strings.HasPrefix(k, key) {
				prefixed = append(prefixed, k)
			}
		}
		if len(prefixed) == 1 {
			return " (did you mean " + prefixed[0] + "?)"
		}
	}
	for k := range s.keys {
		if d := editDistance(key, k); d < bestD || (d == bestD && k < best) {
			best, bestD = k, d
		}
	}
	if best == "" || bestD > 2 || bestD >= len(key)/2+1 {
		return ""
	}
	return " (did you mean " + best + "?)"
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// checkKeys parses content as YAML and walks every document. It returns the key lines, the
// service names in file order, and the unsupported-key errors sorted by line.
func checkKeys(file string, content []byte) (*walker, error) {
	w := &walker{file: file, lines: map[string]int{}}
	dec := yaml.NewDecoder(bytes.NewReader(content))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, &FieldError{File: file, Line: yamlErrLine(err), Msg: "invalid YAML: " + trimYAMLErr(err)}
		}
		if err := w.walkDoc(&doc); err != nil {
			return nil, &FieldError{File: file, Msg: err.Error()}
		}
	}
	sort.SliceStable(w.errs, func(i, j int) bool { return w.errs[i].Line < w.errs[j].Line })
	return w, nil
}

// lineOf returns the line of path, or of its nearest recorded ancestor, or 0.
func (w *walker) lineOf(path string) int {
	for path != "" {
		if l, ok := w.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
	return 0
}

// yaml.v3 errors read "yaml: line 3: mapping values are not allowed in this context".
func yamlErrLine(err error) int {
	msg := err.Error()
	if i := strings.Index(msg, "line "); i >= 0 {
		rest := msg[i+len("line "):]
		j := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
		if j > 0 {
			if n, err := strconv.Atoi(rest[:j]); err == nil {
				return n
			}
		}
	}
	return 0
}

func trimYAMLErr(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if strings.HasPrefix(msg, "line ") {
		if i := strings.Index(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
	}
	return msg
}

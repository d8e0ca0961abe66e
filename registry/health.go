package registry

import (
	"net/http"

	"github.com/podmesh/podmesh/registry/state"
)

func allPassing(cs []*state.Check) bool {
	for _, c := range cs {
		if c.Status != state.HealthPassing {
			return false
		}
	}
	return true
}

func toHealthChecks(cs []*state.Check) []*HealthCheck {
	out := make([]*HealthCheck, len(cs))
	for i, c := range cs {
		out[i] = toHealthCheck(c)
	}
	return out
}

// healthService is GET /v1/health/service/NAME: every instance with its node and the checks
// that decide its health (its node's checks, then its own). ?passing drops an instance if any
// of those checks is not passing (warning too), as Consul does.
func (s *Server) healthService(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	q := queryOf(r)
	passing, err := boolParam(q, "passing")
	if err != nil {
		return err
	}
	tags := q["tag"]
	nm := parseNodeMeta(r)
	f, err := parseFilter(r, typeOf[*ServiceEntry]())
	if err != nil {
		return err
	}
	pretty := wantPretty(r)
	topic := state.TopicHealthService(name)
	type instance struct {
		node   *state.Node
		svc    *state.Service
		checks []*state.Check
	}
	return s.serveQuery(w, r, &query{
		key:   cacheKey(r, boolParamKey("passing", passing), setParam("tag", tags), nm.key(), filterKey(r)),
		index: func(v *state.View) uint64 { return v.TopicIndex(topic) },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch(topic) },
		read: func(v *state.View) func() (*rendered, error) {
			var insts []instance
			for _, sv := range v.ServiceInstances(name) {
				n := v.Node(sv.Node)
				if n == nil || !nm.match(n) || !hasAllTags(sv.Tags, tags) {
					continue
				}
				cs := v.InstanceChecks(sv)
				if passing && !allPassing(cs) {
					continue
				}
				insts = append(insts, instance{n, sv, cs})
			}
			return func() (*rendered, error) {
				out := make([]*ServiceEntry, 0, len(insts))
				for _, in := range insts {
					out = append(out, &ServiceEntry{Node: toNode(in.node), Service: toAgentService(in.svc), Checks: toHealthChecks(in.checks)})
				}
				out, err := filterSlice(f, out)
				if err != nil {
					return nil, err
				}
				return jsonResponse(out, pretty)
			}
		},
	})
}

// checksQuery serves a []HealthCheck read: the checks select returns, filtered by ?filter
// (on HealthCheck) and ?node-meta (on the check's node).
func (s *Server) checksQuery(w http.ResponseWriter, r *http.Request, topic string, sel func(v *state.View) []*state.Check) error {
	nm := parseNodeMeta(r)
	f, err := parseFilter(r, typeOf[*HealthCheck]())
	if err != nil {
		return err
	}
	pretty := wantPretty(r)
	return s.serveQuery(w, r, &query{
		key:   cacheKey(r, nm.key(), filterKey(r)),
		index: func(v *state.View) uint64 { return v.TopicIndex(topic) },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch(topic) },
		read: func(v *state.View) func() (*rendered, error) {
			var cs []*state.Check
			for _, c := range sel(v) {
				if nm != nil && !nm.match(v.Node(c.Node)) {
					continue
				}
				cs = append(cs, c)
			}
			return func() (*rendered, error) {
				out, err := filterSlice(f, toHealthChecks(cs))
				if err != nil {
					return nil, err
				}
				return jsonResponse(nonNilSlice(out), pretty)
			}
		},
	})
}

// healthChecks is GET /v1/health/checks/NAME: the checks of every instance of the service.
func (s *Server) healthChecks(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	return s.checksQuery(w, r, state.TopicHealthService(name), func(v *state.View) []*state.Check {
		var out []*state.Check
		for _, sv := range v.ServiceInstances(name) {
			out = append(out, v.ServiceChecks(sv.Node, sv.ID)...)
		}
		return out
	})
}

// healthState is GET /v1/health/state/STATE, STATE one of any, passing, warning, critical.
func (s *Server) healthState(w http.ResponseWriter, r *http.Request) error {
	st := r.PathValue("state")
	if st != "any" && !state.ValidStatus(st) {
		return badRequest("state", "invalid check state %q: want any, passing, warning or critical", st)
	}
	return s.checksQuery(w, r, state.TopicChecks(st), func(v *state.View) []*state.Check {
		all := v.AllChecks()
		if st == "any" {
			return all
		}
		out := all[:0]
		for _, c := range all {
			if c.Status == st {
				out = append(out, c)
			}
		}
		return out
	})
}

// healthNode is GET /v1/health/node/NAME: every check on the node.
func (s *Server) healthNode(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	return s.checksQuery(w, r, state.TopicNodeChecks(name), func(v *state.View) []*state.Check {
		return v.NodeChecks(name)
	})
}

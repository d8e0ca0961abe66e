package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"time"

	"github.com/podmesh/podmesh/registry/state"
)

// agentSelf is GET /v1/agent/self. Every top-level value is a JSON object: the Go client
// decodes it into map[string]map[string]any, and Prometheus reads Config.Datacenter and
// Agent().NodeName reads Config.NodeName with an unchecked type assertion.
func (s *Server) agentSelf(w http.ResponseWriter, r *http.Request) error {
	var node *state.Node
	var idx uint64
	s.store.View(func(v *state.View) { node, idx = v.Node(v.LocalNode()), v.Index() })
	if node == nil {
		return errors.New("registry: local node missing from the store")
	}
	dc := s.store.Datacenter()
	config := map[string]any{
		"Datacenter": dc, "PrimaryDatacenter": dc, "NodeName": node.Node, "NodeID": node.ID,
		"Revision": "podmesh", "Server": true, "Version": Version, "BuildDate": "1970-01-01T00:00:00Z",
	}
	self := map[string]any{
		"Config": config,
		"DebugConfig": map[string]any{
			"Datacenter": dc, "NodeName": node.Node, "NodeID": node.ID, "AdvertiseAddrLAN": node.Address,
			"ServerMode": true, "ACLsEnabled": s.cfg.ACLToken != "",
		},
		"Coord": map[string]any{
			"Vec": []float64{0, 0, 0, 0, 0, 0, 0, 0}, "Error": 1.5, "Adjustment": 0, "Height": 1e-05,
		},
		"Member": s.member(node),
		"Stats":  map[string]any{"registry": map[string]string{"index": fmt.Sprint(idx)}},
		"Meta":   nonNilMap(maps.Clone(node.Meta)),
	}
	s.setQueryHeaders(w, r, idx)
	return s.writeJSON(w, r, self)
}

func (s *Server) member(node *state.Node) map[string]any {
	return map[string]any{
		"Name": node.Node, "Addr": node.Address, "Port": 8301,
		"Tags":   map[string]string{"role": "consul", "dc": s.store.Datacenter(), "id": node.ID, "vsn": "2", "build": Version},
		"Status": 1, "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2, "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
	}
}

// agentMembers is GET /v1/agent/members: the registry is its own single member.
func (s *Server) agentMembers(w http.ResponseWriter, r *http.Request) error {
	var node *state.Node
	s.store.View(func(v *state.View) { node = v.Node(v.LocalNode()) })
	if node == nil {
		return errors.New("registry: local node missing from the store")
	}
	return s.writeJSON(w, r, []any{s.member(node)})
}

func (s *Server) localAgentService(sv *state.Service) *AgentService {
	as := toAgentService(sv)
	as.Datacenter = s.store.Datacenter()
	return as
}

// agentServices is GET /v1/agent/services: the local node's services by ID.
func (s *Server) agentServices(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilter(r, typeOf[*AgentService]())
	if err != nil {
		return err
	}
	var svcs []*state.Service
	var idx uint64
	s.store.View(func(v *state.View) { svcs, idx = v.NodeServices(v.LocalNode()), v.Index() })
	out := map[string]*AgentService{}
	for _, sv := range svcs {
		as := s.localAgentService(sv)
		if f != nil {
			ok, err := f.Match(as)
			if err != nil {
				return badRequest("filter", "%v", err)
			}
			if !ok {
				continue
			}
		}
		out[sv.ID] = as
	}
	s.setQueryHeaders(w, r, idx)
	return s.writeJSON(w, r, out)
}

// agentService is GET /v1/agent/service/ID, with Consul's hash-based blocking: given
// ?hash= equal to the service's current ContentHash, it waits (up to ?wait) for the service to
// change.
func (s *Server) agentService(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	q := queryOf(r)
	wantHash := q.Get("hash")
	opts, err := parseBlocking(q)
	if err != nil {
		return err
	}
	timer := time.NewTimer(opts.wait)
	defer timer.Stop()
	last := wantHash == ""
	for {
		var sv *state.Service
		var idx uint64
		ch, release := (<-chan struct{})(nil), func() {}
		s.store.View(func(v *state.View) {
			sv, idx = v.Service(v.LocalNode(), id), v.Index()
			if !last {
				ch, release = v.Watch(state.TopicNode(v.LocalNode()))
			}
		})
		if sv == nil {
			release()
			return &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("unknown service ID: %s", id)}
		}
		as := s.localAgentService(sv)
		b, err := json.Marshal(as)
		if err != nil {
			release()
			return err
		}
		hash := fmt.Sprintf("%016x", fnv64(b))
		if last || hash != wantHash {
			release()
			out := struct {
				*AgentService
				ContentHash string
			}{as, hash}
			w.Header().Set("X-Consul-ContentHash", hash)
			s.setQueryHeaders(w, r, idx)
			return s.writeJSON(w, r, out)
		}
		select {
		case <-ch:
		case <-timer.C:
			last = true
		case <-s.closing:
			last = true
		case <-r.Context().Done():
			release()
			return nil
		}
		release()
		if s.storeClosed() {
			return state.ErrClosed
		}
	}
}

func fnv64(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// agentServiceRegister is PUT /v1/agent/service/register[?replace-existing-checks].
func (s *Server) agentServiceRegister(w http.ResponseWriter, r *http.Request) error {
	replace, err := boolParam(queryOf(r), "replace-existing-checks")
	if err != nil {
		return err
	}
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	svc, checks, err := decodeServiceRegistration(body)
	if err != nil {
		return err
	}
	if err := s.store.RegisterAgentService(r.Context(), svc, checks, replace); err != nil {
		return err
	}
	return writeOK(w)
}

// agentServiceDeregister is PUT /v1/agent/service/deregister/ID.
func (s *Server) agentServiceDeregister(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := s.store.DeregisterAgentService(r.Context(), id); err != nil {
		if errors.Is(err, state.ErrNotFound) {
			return &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("Unknown service ID %q. Ensure that the service ID is passed, not the service name.", id)}
		}
		return err
	}
	return writeOK(w)
}

// enableParam reads ?enable= of the maintenance endpoints, which Consul requires.
func enableParam(r *http.Request) (bool, error) {
	q := queryOf(r)
	if _, ok := q["enable"]; !ok {
		return false, badRequest("enable", "missing value for enable")
	}
	return boolParam(q, "enable")
}

// agentServiceMaintenance is PUT /v1/agent/service/maintenance/ID?enable=&reason=.
func (s *Server) agentServiceMaintenance(w http.ResponseWriter, r *http.Request) error {
	enable, err := enableParam(r)
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	if err := s.store.SetServiceMaintenance(r.Context(), id, enable, queryOf(r).Get("reason")); err != nil {
		if errors.Is(err, state.ErrNotFound) {
			return &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("Unknown service ID %q", id)}
		}
		return err
	}
	return writeOK(w)
}

// agentNodeMaintenance is PUT /v1/agent/maintenance?enable=&reason=.
func (s *Server) agentNodeMaintenance(w http.ResponseWriter, r *http.Request) error {
	enable, err := enableParam(r)
	if err != nil {
		return err
	}
	if err := s.store.SetNodeMaintenance(r.Context(), enable, queryOf(r).Get("reason")); err != nil {
		return err
	}
	return writeOK(w)
}

// agentChecks is GET /v1/agent/checks: the local node's checks by ID (serfHealth, which
// belongs to the cluster rather than the agent, is left out as in Consul).
func (s *Server) agentChecks(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilter(r, typeOf[*AgentCheck]())
	if err != nil {
		return err
	}
	var cs []*state.Check
	var idx uint64
	s.store.View(func(v *state.View) { cs, idx = v.NodeChecks(v.LocalNode()), v.Index() })
	out := map[string]*AgentCheck{}
	for _, c := range cs {
		if c.CheckID == state.SerfCheckID {
			continue
		}
		ac := toAgentCheck(c)
		if f != nil {
			ok, err := f.Match(ac)
			if err != nil {
				return badRequest("filter", "%v", err)
			}
			if !ok {
				continue
			}
		}
		out[c.CheckID] = ac
	}
	s.setQueryHeaders(w, r, idx)
	return s.writeJSON(w, r, out)
}

// agentCheckRegister is PUT /v1/agent/check/register.
func (s *Server) agentCheckRegister(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	c, err := decodeCheckRegistration(body)
	if err != nil {
		return err
	}
	if err := s.store.RegisterAgentCheck(r.Context(), c); err != nil {
		return err
	}
	return writeOK(w)
}

// agentCheckDeregister is PUT /v1/agent/check/deregister/ID.
func (s *Server) agentCheckDeregister(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := s.store.DeregisterAgentCheck(r.Context(), id); err != nil {
		if errors.Is(err, state.ErrNotFound) {
			return &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("Unknown check ID %q", id)}
		}
		return err
	}
	return writeOK(w)
}

// setTTL validates that id is a TTL check of the local node and hands the update to the
// check runner, which resets the TTL timer.
func (s *Server) setTTL(r *http.Request, id, status, output string) error {
	var c *state.Check
	s.store.View(func(v *state.View) { c = v.Check(v.LocalNode(), id) })
	if c == nil {
		return &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("Unknown check ID %q", id)}
	}
	if c.Type != state.CheckTypeTTL {
		return badRequest("CheckID", "check %q is not a TTL check (type %q)", id, c.Type)
	}
	if s.cfg.Checks != nil {
		return s.cfg.Checks.SetTTL(r.Context(), id, status, output)
	}
	return s.store.UpdateCheck(r.Context(), c.Node, id, status, output)
}

// agentCheckTTL is PUT /v1/agent/check/{pass,warn,fail}/ID?note=.
func (s *Server) agentCheckTTL(status string) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := s.setTTL(r, r.PathValue("id"), status, queryOf(r).Get("note")); err != nil {
			return err
		}
		return writeOK(w)
	}
}

// agentCheckUpdate is PUT /v1/agent/check/update/ID with {"Status": ..., "Output": ...}.
func (s *Server) agentCheckUpdate(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	var u struct {
		Status string
		Output string
	}
	if err := decodeJSON(body, &u); err != nil {
		return err
	}
	u.Status = strings.TrimSpace(u.Status)
	if !state.ValidStatus(u.Status) {
		return badRequest("Status", "invalid check status %q: want passing, warning or critical", u.Status)
	}
	if err := s.setTTL(r, r.PathValue("id"), u.Status, u.Output); err != nil {
		return err
	}
	return writeOK(w)
}

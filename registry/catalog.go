package registry

import (
	"net/http"
	"slices"

	"github.com/podmesh/podmesh/registry/state"
)

// checkDC rejects a write addressed to another datacenter, as Consul does when it has no
// path there.
func (s *Server) checkDC(dc string) error {
	if dc != "" && dc != s.store.Datacenter() {
		return &RequestError{Status: http.StatusInternalServerError, Field: "Datacenter", Msg: "No path to datacenter " + dc}
	}
	return nil
}

// catalogRegister is PUT /v1/catalog/register; it answers true.
func (s *Server) catalogRegister(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	reg, dc, err := decodeCatalogRegister(body)
	if err != nil {
		return err
	}
	if err := s.checkDC(dc); err != nil {
		return err
	}
	if err := s.store.CatalogRegister(r.Context(), reg); err != nil {
		return err
	}
	return s.writeJSON(w, r, true)
}

// catalogDeregister is PUT /v1/catalog/deregister; it answers true.
func (s *Server) catalogDeregister(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	d, err := decodeCatalogDeregister(body)
	if err != nil {
		return err
	}
	if err := s.checkDC(d.Datacenter); err != nil {
		return err
	}
	if err := s.store.CatalogDeregister(r.Context(), d.Node, d.ServiceID, d.CheckID); err != nil {
		return err
	}
	return s.writeJSON(w, r, true)
}

// catalogDatacenters is GET /v1/catalog/datacenters.
func (s *Server) catalogDatacenters(w http.ResponseWriter, r *http.Request) error {
	var idx uint64
	s.store.View(func(v *state.View) { idx = v.Index() })
	s.setQueryHeaders(w, r, idx)
	return s.writeJSON(w, r, []string{s.store.Datacenter()})
}

// catalogNodes is GET /v1/catalog/nodes.
func (s *Server) catalogNodes(w http.ResponseWriter, r *http.Request) error {
	nm := parseNodeMeta(r)
	f, err := parseFilter(r, typeOf[*Node]())
	if err != nil {
		return err
	}
	pretty := wantPretty(r)
	return s.serveQuery(w, r, &query{
		key:   cacheKey(r, nm.key(), filterKey(r)),
		index: func(v *state.View) uint64 { return v.TopicIndex(state.TopicNodes) },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch(state.TopicNodes) },
		read: func(v *state.View) func() (*rendered, error) {
			var nodes []*state.Node
			for _, n := range v.Nodes() {
				if nm.match(n) {
					nodes = append(nodes, n)
				}
			}
			return func() (*rendered, error) {
				out := make([]*Node, 0, len(nodes))
				for _, n := range nodes {
					out = append(out, toNode(n))
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

// catalogServices is GET /v1/catalog/services: service name → the union of its instances'
// tags. ?filter is evaluated on each instance as a CatalogService (ServiceName, ServiceTags,
// NodeMeta.k, ServiceMeta.k, ...), as Consul does.
func (s *Server) catalogServices(w http.ResponseWriter, r *http.Request) error {
	nm := parseNodeMeta(r)
	f, err := parseFilter(r, typeOf[*CatalogService]())
	if err != nil {
		return err
	}
	pretty := wantPretty(r)
	type instance struct {
		node *state.Node
		svc  *state.Service
	}
	return s.serveQuery(w, r, &query{
		key:   cacheKey(r, nm.key(), filterKey(r)),
		index: func(v *state.View) uint64 { return v.TopicIndex(state.TopicServices) },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch(state.TopicServices) },
		read: func(v *state.View) func() (*rendered, error) {
			var insts []instance
			for _, sv := range v.AllServices() {
				n := v.Node(sv.Node)
				if n == nil || !nm.match(n) {
					continue
				}
				insts = append(insts, instance{n, sv})
			}
			return func() (*rendered, error) {
				out := map[string][]string{}
				for _, in := range insts {
					if f != nil {
						ok, err := f.Match(toCatalogService(in.node, in.svc))
						if err != nil {
							return nil, badRequest("filter", "%v", err)
						}
						if !ok {
							continue
						}
					}
					tags := out[in.svc.Service]
					if tags == nil {
						tags = []string{}
					}
					for _, t := range in.svc.Tags {
						if !slices.Contains(tags, t) {
							tags = append(tags, t)
						}
					}
					out[in.svc.Service] = tags
				}
				for _, tags := range out {
					slices.Sort(tags)
				}
				return jsonResponse(out, pretty)
			}
		},
	})
}

// catalogService is GET /v1/catalog/service/NAME.
func (s *Server) catalogService(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	tags := queryOf(r)["tag"]
	nm := parseNodeMeta(r)
	f, err := parseFilter(r, typeOf[*CatalogService]())
	if err != nil {
		return err
	}
	pretty := wantPretty(r)
	topic := state.TopicCatalogService(name)
	type instance struct {
		node *state.Node
		svc  *state.Service
	}
	return s.serveQuery(w, r, &query{
		key:   cacheKey(r, setParam("tag", tags), nm.key(), filterKey(r)),
		index: func(v *state.View) uint64 { return v.TopicIndex(topic) },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch(topic) },
		read: func(v *state.View) func() (*rendered, error) {
			var insts []instance
			for _, sv := range v.ServiceInstances(name) {
				n := v.Node(sv.Node)
				if n == nil || !nm.match(n) || !hasAllTags(sv.Tags, tags) {
					continue
				}
				insts = append(insts, instance{n, sv})
			}
			return func() (*rendered, error) {
				out := make([]*CatalogService, 0, len(insts))
				for _, in := range insts {
					out = append(out, toCatalogService(in.node, in.svc))
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

// catalogNode is GET /v1/catalog/node/NAME: the node and its services by ID, or null (with
// 200) for an unknown node, as Consul answers.
func (s *Server) catalogNode(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	f, err := parseFilter(r, typeOf[*AgentService]())
	if err != nil {
		return err
	}
	pretty := wantPretty(r)
	topic := state.TopicNode(name)
	return s.serveQuery(w, r, &query{
		key:   cacheKey(r, filterKey(r)),
		index: func(v *state.View) uint64 { return v.TopicIndex(topic) },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch(topic) },
		read: func(v *state.View) func() (*rendered, error) {
			n := v.Node(name)
			svcs := v.NodeServices(name)
			return func() (*rendered, error) {
				if n == nil {
					return jsonResponse(nil, pretty)
				}
				out := &CatalogNode{Node: toNode(n), Services: map[string]*AgentService{}}
				for _, sv := range svcs {
					as := toAgentService(sv)
					if f != nil {
						ok, err := f.Match(as)
						if err != nil {
							return nil, badRequest("filter", "%v", err)
						}
						if !ok {
							continue
						}
					}
					out.Services[sv.ID] = as
				}
				return jsonResponse(out, pretty)
			}
		},
	})
}

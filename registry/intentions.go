package registry

import (
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/podmesh/podmesh/registry/state"
	"github.com/podmesh/podmesh/tls/authz"
)

// The intentions endpoints and authorization. Intentions are evaluated with Consul's
// precedence and matching rules (package tls/authz); with no matching intention the
// registry's default policy (-default-intention-policy) decides.

var notFoundIntention = &rendered{status: http.StatusNotFound, contentType: "text/plain; charset=utf-8", body: []byte("Intention not found")}

// intentionsList is GET /v1/connect/intentions[?filter=]: every intention in evaluation order,
// blocking on any intention change.
func (s *Server) intentionsList(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilter(r, typeOf[*authz.Intention]())
	if err != nil {
		return err
	}
	pretty := wantPretty(r)
	return s.serveQuery(w, r, &query{
		key:   cacheKey(r, filterKey(r)),
		index: func(v *state.View) uint64 { return v.TopicIndex(state.TopicIntentions) },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch(state.TopicIntentions) },
		read: func(v *state.View) func() (*rendered, error) {
			all := v.Intentions()
			return func() (*rendered, error) {
				out, err := filterSlice(f, all)
				if err != nil {
					return nil, err
				}
				return jsonResponse(nonNilSlice(out), pretty)
			}
		},
	})
}

// intentionCreate is the deprecated POST /v1/connect/intentions: it answers {"ID": ...}; a
// second intention for the same pair is refused (409).
func (s *Server) intentionCreate(w http.ResponseWriter, r *http.Request) error {
	x, err := s.readIntention(w, r)
	if err != nil {
		return err
	}
	id, err := s.store.CreateIntention(r.Context(), x)
	if err != nil {
		return err
	}
	return s.writeJSON(w, r, map[string]string{"ID": id})
}

func (s *Server) readIntention(w http.ResponseWriter, r *http.Request) (*authz.Intention, error) {
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return nil, err
	}
	x, err := decodeIntention(body)
	if err != nil {
		return nil, err
	}
	if err := checkIntention(x); err != nil {
		return nil, err
	}
	return x, nil
}

// exactParams reads ?source= and ?destination= of the exact endpoints.
func exactParams(r *http.Request) (src, dst string, err error) {
	q := queryOf(r)
	if src, err = parseServiceParam("source", q.Get("source")); err != nil {
		return "", "", err
	}
	if dst, err = parseServiceParam("destination", q.Get("destination")); err != nil {
		return "", "", err
	}
	return src, dst, nil
}

// intentionExactGet is GET /v1/connect/intentions/exact?source=&destination=: the intention
// or 404 "Intention not found" (which consul/api turns into nil), blocking on the intentions
// of the destination.
func (s *Server) intentionExactGet(w http.ResponseWriter, r *http.Request) error {
	src, dst, err := exactParams(r)
	if err != nil {
		return err
	}
	pretty := wantPretty(r)
	topic := state.TopicIntentionsByDestination(dst)
	return s.serveQuery(w, r, &query{
		key:   cacheKey(r, param("source", src), param("destination", dst)),
		index: func(v *state.View) uint64 { return v.TopicIndex(topic) },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch(topic) },
		read: func(v *state.View) func() (*rendered, error) {
			x := v.IntentionExact(authz.DefaultNamespace, src, authz.DefaultNamespace, dst)
			return func() (*rendered, error) {
				if x == nil {
					return notFoundIntention, nil
				}
				return jsonResponse(x, pretty)
			}
		},
	})
}

// intentionExactPut is PUT /v1/connect/intentions/exact?source=&destination=: create or
// replace the intention for the pair; the names come from the query, as in Consul.
func (s *Server) intentionExactPut(w http.ResponseWriter, r *http.Request) error {
	src, dst, err := exactParams(r)
	if err != nil {
		return err
	}
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	x, err := decodeIntention(body)
	if err != nil {
		return err
	}
	x.SourceNS, x.SourceName, x.DestinationNS, x.DestinationName = authz.DefaultNamespace, src, authz.DefaultNamespace, dst
	if err := checkIntention(x); err != nil {
		return err
	}
	if err := s.store.PutIntentionExact(r.Context(), x); err != nil {
		return err
	}
	return s.writeJSON(w, r, true)
}

// intentionExactDelete is DELETE /v1/connect/intentions/exact?source=&destination=; deleting
// a missing intention succeeds, as in Consul.
func (s *Server) intentionExactDelete(w http.ResponseWriter, r *http.Request) error {
	src, dst, err := exactParams(r)
	if err != nil {
		return err
	}
	if err := s.store.DeleteIntentionExact(r.Context(), authz.DefaultNamespace, src, authz.DefaultNamespace, dst); err != nil {
		return err
	}
	return s.writeJSON(w, r, true)
}

// intentionMatch is GET /v1/connect/intentions/match?by=source|destination&name=...
// (repeatable): for each name, the intentions that apply to it in evaluation order, blocking
// on the intentions of those names (and of the wildcard), so a change for another
// destination wakes nobody here.
func (s *Server) intentionMatch(w http.ResponseWriter, r *http.Request) error {
	q := queryOf(r)
	var by authz.MatchType
	var topicOf func(string) string
	switch q.Get("by") {
	case string(authz.ByDestination):
		by, topicOf = authz.ByDestination, state.TopicIntentionsByDestination
	case string(authz.BySource):
		by, topicOf = authz.BySource, state.TopicIntentionsBySource
	default:
		return badRequest("by", "%q: 'by' parameter must be one of 'source' or 'destination'", q.Get("by"))
	}
	rawNames := q["name"]
	if len(rawNames) == 0 {
		return badRequest("name", "required query parameter 'name' not set")
	}
	names := make([]string, len(rawNames))
	topics := []string{topicOf(authz.Wildcard)}
	for i, n := range rawNames {
		name, err := parseServiceParam("name", n)
		if err != nil {
			return err
		}
		names[i] = name
		topics = append(topics, topicOf(name))
	}
	slices.Sort(topics)
	topics = slices.Compact(topics)
	pretty := wantPretty(r)
	return s.serveQuery(w, r, &query{
		key: cacheKey(r, param("by", string(by)), setParam("name", rawNames)),
		index: func(v *state.View) uint64 {
			var idx uint64
			for _, t := range topics {
				idx = max(idx, v.TopicIndex(t))
			}
			return idx
		},
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.WatchTopics(topics...) },
		read: func(v *state.View) func() (*rendered, error) {
			cands := make([][]*authz.Intention, len(names))
			for i, n := range names {
				if by == authz.ByDestination {
					cands[i] = v.IntentionsByDestination(n)
				} else {
					cands[i] = v.IntentionsBySource(n)
				}
			}
			return func() (*rendered, error) {
				out := make(map[string][]*authz.Intention, len(names))
				for i, n := range names {
					m, err := authz.Match(cands[i], by, n)
					if err != nil {
						return nil, badRequest("name", "%v", err)
					}
					out[rawNames[i]] = nonNilSlice(m)
				}
				return jsonResponse(out, pretty)
			}
		},
	})
}

// intentionCheck is GET /v1/connect/intentions/check?source=&destination=: {"Allowed": bool},
// L7 intentions counting as deny.
func (s *Server) intentionCheck(w http.ResponseWriter, r *http.Request) error {
	src, dst, err := exactParams(r)
	if err != nil {
		return err
	}
	if st := queryOf(r).Get("source-type"); st != "" && st != string(authz.SourceConsul) {
		return badRequest("source-type", "%q: must be %q", st, authz.SourceConsul)
	}
	var cands []*authz.Intention
	var idx uint64
	s.store.View(func(v *state.View) {
		cands, idx = v.IntentionsByDestination(dst), v.TopicIndex(state.TopicIntentions)
	})
	ok, err := authz.Check(cands, src, dst, s.policy)
	if err != nil {
		return badRequest("source", "%v", err)
	}
	s.setQueryHeaders(w, r, idx)
	return s.writeJSON(w, r, map[string]bool{"Allowed": ok})
}

// intentionGet is the deprecated GET /v1/connect/intentions/ID (blocking on any intention
// change).
func (s *Server) intentionGet(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkUUID(id); err != nil {
		return err
	}
	pretty := wantPretty(r)
	return s.serveQuery(w, r, &query{
		key:   cacheKey(r),
		index: func(v *state.View) uint64 { return v.TopicIndex(state.TopicIntentions) },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch(state.TopicIntentions) },
		read: func(v *state.View) func() (*rendered, error) {
			x := v.IntentionByID(id)
			return func() (*rendered, error) {
				if x == nil {
					return notFoundIntention, nil
				}
				return jsonResponse(x, pretty)
			}
		},
	})
}

// intentionUpdate is the deprecated PUT /v1/connect/intentions/ID.
func (s *Server) intentionUpdate(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkUUID(id); err != nil {
		return err
	}
	x, err := s.readIntention(w, r)
	if err != nil {
		return err
	}
	if err := s.store.UpdateIntention(r.Context(), id, x); err != nil {
		if errors.Is(err, state.ErrNotFound) {
			return &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("Cannot modify non-existent intention: '%s'", id)}
		}
		return err
	}
	return s.writeJSON(w, r, map[string]string{"ID": id})
}

// intentionDelete is the deprecated DELETE /v1/connect/intentions/ID.
func (s *Server) intentionDelete(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkUUID(id); err != nil {
		return err
	}
	if err := s.store.DeleteIntention(r.Context(), id); err != nil {
		if errors.Is(err, state.ErrNotFound) {
			return &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("Cannot delete non-existent intention: '%s'", id)}
		}
		return err
	}
	return s.writeJSON(w, r, true)
}

// agentAuthorize is POST /v1/agent/connect/authorize: may the client certificate's service
// connect to Target? As Consul: the first intention in evaluation order whose destination and
// source match decides (an L7 one denies), else the default policy; the trust domain is not
// checked here (the TLS handshake verified the certificate).
func (s *Server) agentAuthorize(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	req, id, err := decodeAuthorize(body)
	if err != nil {
		return err
	}
	partition, ns, target, err := authz.ParseServiceName(req.Target)
	if err != nil {
		return badRequest("Target", "%v", err)
	}
	if partition != "" || ns != authz.DefaultNamespace {
		return badRequest("Target", "%q: only the default namespace and partition are supported", req.Target)
	}
	var cands []*authz.Intention
	s.store.View(func(v *state.View) { cands = v.IntentionsByDestination(target) })
	ok, reason, err := authz.Authorize(cands, id, target, s.policy)
	if err != nil {
		return badRequest("Target", "%v", err)
	}
	decision := "deny"
	if ok {
		decision = "allow"
	}
	s.metrics.authorize.WithLabelValues(decision).Inc()
	return s.writeJSON(w, r, struct {
		Authorized bool
		Reason     string
	}{ok, reason})
}

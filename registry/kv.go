package registry

import (
	"net/http"
	"strings"

	"github.com/podmesh/podmesh/registry/state"
)

// kvGet is GET /v1/kv/KEY with ?recurse, ?keys[&separator=], ?raw. A missing key (or an empty
// list) is a 404 that still carries X-Consul-Index, so clients can block until it appears.
func (s *Server) kvGet(w http.ResponseWriter, r *http.Request) error {
	key := r.PathValue("key")
	p, err := parseKVGetParams(queryOf(r))
	if err != nil {
		return err
	}
	pretty := wantPretty(r)
	notFound := &rendered{status: http.StatusNotFound}
	q := &query{key: cacheKey(r, boolParamKey("recurse", p.Recurse), boolParamKey("keys", p.Keys),
		param("separator", p.Separator), boolParamKey("raw", p.Raw))}
	switch {
	case p.Recurse || p.Keys:
		q.index = func(v *state.View) uint64 { return v.KVPrefixIndex(key) }
		q.watch = func(v *state.View) (<-chan struct{}, func()) { return v.WatchKVPrefix(key) }
		q.read = func(v *state.View) func() (*rendered, error) {
			pairs := v.KVList(key)
			return func() (*rendered, error) {
				if len(pairs) == 0 {
					return notFound, nil
				}
				if p.Keys {
					return jsonResponse(kvKeys(pairs, key, p.Separator), pretty)
				}
				out := make([]*KVPair, len(pairs))
				for i, kv := range pairs {
					out[i] = toKVPair(kv)
				}
				return jsonResponse(out, pretty)
			}
		}
	default:
		if key == "" {
			return badRequest("key", "missing key name")
		}
		topic := state.TopicKV(key)
		q.index = func(v *state.View) uint64 { return v.TopicIndex(topic) }
		q.watch = func(v *state.View) (<-chan struct{}, func()) { return v.Watch(topic) }
		q.read = func(v *state.View) func() (*rendered, error) {
			kv := v.KV(key)
			return func() (*rendered, error) {
				switch {
				case kv == nil:
					return notFound, nil
				case p.Raw:
					return &rendered{status: http.StatusOK, contentType: "application/octet-stream", body: kv.Value}, nil
				default:
					return jsonResponse([]*KVPair{toKVPair(kv)}, pretty)
				}
			}
		}
	}
	return s.serveQuery(w, r, q)
}

// kvKeys lists the keys under prefix; with a separator, keys are cut after the first
// separator past the prefix and deduplicated ("a/b/c" under "a/" with "/" gives "a/b/").
func kvKeys(pairs []*state.KVPair, prefix, sep string) []string {
	out := make([]string, 0, len(pairs))
	for _, p := range pairs {
		k := p.Key
		if sep != "" {
			if i := strings.Index(k[len(prefix):], sep); i >= 0 {
				k = k[:len(prefix)+i+len(sep)]
			}
		}
		if n := len(out); n > 0 && out[n-1] == k {
			continue // pairs are sorted, so duplicates are adjacent
		}
		out = append(out, k)
	}
	return out
}

// kvPut is PUT /v1/kv/KEY[?flags=][&cas=] with the raw value as body; it answers true or
// false (a failed CAS).
func (s *Server) kvPut(w http.ResponseWriter, r *http.Request) error {
	key := r.PathValue("key")
	if key == "" {
		return badRequest("key", "missing key name")
	}
	p, err := parseKVPutParams(queryOf(r))
	if err != nil {
		return err
	}
	value, err := readBody(w, r, s.cfg.MaxKVValueBytes)
	if err != nil {
		return err
	}
	ok, err := s.store.KVPut(r.Context(), key, value, p.Flags, p.CAS)
	if err != nil {
		return err
	}
	return s.writeJSON(w, r, ok)
}

// kvDelete is DELETE /v1/kv/KEY[?recurse][&cas=]; it answers true or false (a failed CAS).
func (s *Server) kvDelete(w http.ResponseWriter, r *http.Request) error {
	key := r.PathValue("key")
	q := queryOf(r)
	recurse, err := boolParam(q, "recurse")
	if err != nil {
		return err
	}
	if key == "" && !recurse {
		return badRequest("key", "missing key name")
	}
	cas, err := parseUintParam(q, "cas")
	if err != nil {
		return err
	}
	ok, err := s.store.KVDelete(r.Context(), key, recurse, cas)
	if err != nil {
		return err
	}
	return s.writeJSON(w, r, ok)
}

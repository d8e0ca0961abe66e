package registry

import (
	"net/http"
	"reflect"
	"slices"
	"strings"

	"github.com/podmesh/podmesh/registry/filter"
	"github.com/podmesh/podmesh/registry/state"
)

// parseFilter parses ?filter= and validates it against the type the endpoint filters (a 400
// naming the bad token or selector otherwise). No filter gives a nil *Filter, which matches
// everything.
func parseFilter(r *http.Request, t reflect.Type) (*filter.Filter, error) {
	expr := queryOf(r).Get("filter")
	if strings.TrimSpace(expr) == "" {
		return nil, nil
	}
	f, err := filter.Parse(expr)
	if err != nil {
		return nil, badRequest("filter", "%v", err)
	}
	if err := f.Validate(t); err != nil {
		return nil, badRequest("filter", "%v", err)
	}
	return f, nil
}

// metaFilter is ?node-meta=key:value (repeatable): every pair must be in the node's Meta.
type metaFilter map[string]string

func parseNodeMeta(r *http.Request) metaFilter {
	vals := queryOf(r)["node-meta"]
	if len(vals) == 0 {
		return nil
	}
	m := metaFilter{}
	for _, v := range vals {
		k, val, _ := strings.Cut(v, ":")
		m[k] = val
	}
	return m
}

// key is the filter's render-cache key: its pairs after last-wins, sorted.
func (m metaFilter) key() keyParam {
	vals := make([]string, 0, len(m))
	for k, v := range m {
		vals = append(vals, k+":"+v)
	}
	slices.Sort(vals)
	return keyParam{"node-meta", vals}
}

func (m metaFilter) match(n *state.Node) bool {
	if n == nil {
		return len(m) == 0
	}
	for k, v := range m {
		got, ok := n.Meta[k]
		if !ok || got != v {
			return false
		}
	}
	return true
}

// filterSlice keeps the elements f matches. The filter was validated for the element type, so
// Match cannot fail on a well-formed element; an error is returned anyway rather than hidden.
func filterSlice[T any](f *filter.Filter, in []T) ([]T, error) {
	if f == nil {
		return in, nil
	}
	out := in[:0:0]
	for _, v := range in {
		ok, err := f.Match(v)
		if err != nil {
			return nil, badRequest("filter", "%v", err)
		}
		if ok {
			out = append(out, v)
		}
	}
	return out, nil
}

func typeOf[T any]() reflect.Type { return reflect.TypeFor[T]() }

// hasAllTags reports whether tags holds every one of want, ignoring case as Consul does.
func hasAllTags(tags, want []string) bool {
	for _, w := range want {
		found := false
		for _, t := range tags {
			if strings.EqualFold(t, w) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

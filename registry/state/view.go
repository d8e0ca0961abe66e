package state

import (
	"slices"
	"strings"
	"sync"
	"time"
)

// View is a consistent read-only view of the committed state, valid only inside the function
// passed to Store.View. The rows it returns are immutable and may be kept after it returns.
type View struct {
	st *memState
	s  *Store
}

// View runs fn with a consistent view of the committed state. Writes are applied to memory
// only between views, so fn sees every acknowledged write or none of a group. fn must be short
// and must not call the store's write methods.
func (s *Store) View(fn func(v *View)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fn(&View{st: s.st, s: s})
}

// Index is the store's global index: the index of the latest write.
func (v *View) Index() uint64 { return v.st.index }

// TopicIndex is the modify index of a topic (0 if nothing ever touched it).
func (v *View) TopicIndex(topic string) uint64 { return v.st.topics[topic] }

// KVPrefixIndex is the highest modify index of any key under prefix, deleted keys included,
// so deleting the newest key of a prefix still raises the prefix's index.
func (v *View) KVPrefixIndex(prefix string) uint64 {
	keys := v.st.kvTopicKeys
	i, _ := slices.BinarySearch(keys, prefix)
	var max uint64
	for ; i < len(keys) && strings.HasPrefix(keys[i], prefix); i++ {
		if idx := v.st.topics[kvTopicPrefix+keys[i]]; idx > max {
			max = idx
		}
	}
	return max
}

// LocalNode is the name of the registry's own node.
func (v *View) LocalNode() string { return v.s.opts.NodeName }

// Node returns the named node, or nil.
func (v *View) Node(name string) *Node { return v.st.nodes[name] }

// Nodes returns every node, sorted by name.
func (v *View) Nodes() []*Node {
	out := make([]*Node, 0, len(v.st.nodes))
	for _, n := range v.st.nodes {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b *Node) int { return strings.Compare(a.Node, b.Node) })
	return out
}

func sortServices(out []*Service) {
	slices.SortFunc(out, func(a, b *Service) int {
		if c := strings.Compare(a.Node, b.Node); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

// ServiceInstances returns the instances of the named service, sorted by node then ID.
func (v *View) ServiceInstances(name string) []*Service {
	m := v.st.byName[name]
	out := make([]*Service, 0, len(m))
	for _, s := range m {
		out = append(out, s)
	}
	sortServices(out)
	return out
}

// ServiceNames returns the names of all services, sorted.
func (v *View) ServiceNames() []string {
	out := make([]string, 0, len(v.st.byName))
	for n := range v.st.byName {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// AllServices returns every service instance, sorted by node then ID.
func (v *View) AllServices() []*Service {
	out := make([]*Service, 0, len(v.st.services))
	for _, s := range v.st.services {
		out = append(out, s)
	}
	sortServices(out)
	return out
}

// Service returns the service with the ID on node, or nil.
func (v *View) Service(node, id string) *Service { return v.st.services[serviceKey{node, id}] }

// NodeServices returns the services on node, sorted by ID.
func (v *View) NodeServices(node string) []*Service {
	m := v.st.byNode[node]
	out := make([]*Service, 0, len(m))
	for _, s := range m {
		out = append(out, s)
	}
	sortServices(out)
	return out
}

func sortChecks(out []*Check) {
	slices.SortFunc(out, func(a, b *Check) int {
		if c := strings.Compare(a.Node, b.Node); c != 0 {
			return c
		}
		return strings.Compare(a.CheckID, b.CheckID)
	})
}

// Check returns the check with the ID on node, or nil.
func (v *View) Check(node, id string) *Check { return v.st.checks[checkKey{node, id}] }

// NodeChecks returns every check on node (node-level and service checks), sorted by ID.
func (v *View) NodeChecks(node string) []*Check {
	m := v.st.checksByNode[node]
	out := make([]*Check, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	sortChecks(out)
	return out
}

// InstanceChecks returns the checks that decide an instance's health: the node-level checks
// of its node followed by the service's own checks, each group sorted by ID.
func (v *View) InstanceChecks(s *Service) []*Check {
	nodeLevel := v.st.checksBySvc[serviceKey{s.Node, ""}]
	own := v.st.checksBySvc[serviceKey{s.Node, s.ID}]
	out := make([]*Check, 0, len(nodeLevel)+len(own))
	for _, c := range nodeLevel {
		out = append(out, c)
	}
	sortChecks(out)
	n := len(out)
	for _, c := range own {
		out = append(out, c)
	}
	sortChecks(out[n:])
	return out
}

// ServiceChecks returns the checks bound to service id on node, sorted by ID.
func (v *View) ServiceChecks(node, id string) []*Check {
	m := v.st.checksBySvc[serviceKey{node, id}]
	out := make([]*Check, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	sortChecks(out)
	return out
}

// ManagedChecks calls fn for every check of node the registry runs, in no particular order.
func (v *View) ManagedChecks(node string, fn func(c *Check)) {
	for _, c := range v.st.checksByNode[node] {
		if c.Managed {
			fn(c)
		}
	}
}

// AllChecks returns every check, sorted by node then ID.
func (v *View) AllChecks() []*Check {
	out := make([]*Check, 0, len(v.st.checks))
	for _, c := range v.st.checks {
		out = append(out, c)
	}
	sortChecks(out)
	return out
}

// CriticalSince returns when the check last turned critical (zero if it is not critical).
func (v *View) CriticalSince(node, id string) time.Time {
	return v.st.criticalSince[checkKey{node, id}]
}

// KV returns the pair stored under key, or nil.
func (v *View) KV(key string) *KVPair { return v.st.kv[key] }

// KVList returns the pairs under prefix, sorted by key.
func (v *View) KVList(prefix string) []*KVPair {
	keys := v.st.kvKeys
	i, _ := slices.BinarySearch(keys, prefix)
	var out []*KVPair
	for ; i < len(keys) && strings.HasPrefix(keys[i], prefix); i++ {
		out = append(out, v.st.kv[keys[i]])
	}
	return out
}

// Watch returns a channel closed at the next change to topic, and a release function the
// caller must call once it stops waiting. The channel is registered atomically with this view,
// so no change after the view can be missed.
func (v *View) Watch(topic string) (<-chan struct{}, func()) {
	return v.s.watch(v.s.watches, topic)
}

// WatchTopics is Watch for several topics: the channel is closed at the next change to any of
// them. Watchers of the same set of topics share one channel, as with Watch.
func (v *View) WatchTopics(topics ...string) (<-chan struct{}, func()) {
	if len(topics) == 1 {
		return v.Watch(topics[0])
	}
	return v.s.watchMulti(topics)
}

// WatchKVPrefix is Watch for every key under prefix.
func (v *View) WatchKVPrefix(prefix string) (<-chan struct{}, func()) {
	return v.s.watch(v.s.prefixWatches, prefix)
}

// watchEntry is one topic's wake-up channel, shared by all its watchers. A change closes it
// and removes it from the map, so the next watcher gets a fresh one (close-and-replace).
type watchEntry struct {
	ch   chan struct{}
	refs int
	once sync.Once
}

func (w *watchEntry) fire() {
	w.once.Do(func() { close(w.ch) })
}

func (s *Store) watch(m map[string]*watchEntry, key string) (<-chan struct{}, func()) {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	select {
	case <-s.quit:
		ch := make(chan struct{})
		close(ch)
		return ch, func() {}
	default:
	}
	w := m[key]
	if w == nil {
		w = &watchEntry{ch: make(chan struct{})}
		m[key] = w
	}
	w.refs++
	var once sync.Once
	return w.ch, func() {
		once.Do(func() {
			s.watchMu.Lock()
			defer s.watchMu.Unlock()
			w.refs--
			if w.refs == 0 && m[key] == w {
				delete(m, key)
			}
		})
	}
}

func (s *Store) watchMulti(topics []string) (<-chan struct{}, func()) {
	topics = slices.Clone(topics)
	slices.Sort(topics)
	topics = slices.Compact(topics)
	key := strings.Join(topics, "\x00")
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	select {
	case <-s.quit:
		ch := make(chan struct{})
		close(ch)
		return ch, func() {}
	default:
	}
	w := s.multiWatches[key]
	if w == nil {
		w = &watchEntry{ch: make(chan struct{})}
		s.multiWatches[key] = w
		for _, t := range topics {
			m := s.topicMulti[t]
			if m == nil {
				m = map[string]struct{}{}
				s.topicMulti[t] = m
			}
			m[key] = struct{}{}
		}
	}
	w.refs++
	var once sync.Once
	return w.ch, func() {
		once.Do(func() {
			s.watchMu.Lock()
			defer s.watchMu.Unlock()
			w.refs--
			if w.refs == 0 && s.multiWatches[key] == w {
				s.removeMultiLocked(key)
			}
		})
	}
}

// removeMultiLocked forgets the multi-watch key (watchMu held).
func (s *Store) removeMultiLocked(key string) {
	delete(s.multiWatches, key)
	for _, t := range strings.Split(key, "\x00") {
		if m := s.topicMulti[t]; m != nil {
			delete(m, key)
			if len(m) == 0 {
				delete(s.topicMulti, t)
			}
		}
	}
}

// Watchers returns the number of topics, topic sets and KV prefixes with waiting watchers
// (for tests and metrics).
func (s *Store) Watchers() int {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	return len(s.watches) + len(s.prefixWatches) + len(s.multiWatches)
}

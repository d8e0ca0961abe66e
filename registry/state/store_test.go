package state

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/podmesh/podmesh/internal/testutil"
)

func openStore(t *testing.T, dir string, mod ...func(*Options)) *Store {
	t.Helper()
	opts := Options{Dir: dir, NodeName: "node1", NodeAddress: "127.0.0.1"}
	for _, m := range mod {
		m(&opts)
	}
	s, err := Open(testutil.Context(t, 10*time.Second), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func ctx(t *testing.T) context.Context { return testutil.Context(t, 10*time.Second) }

func topicIndex(s *Store, topic string) (idx uint64) {
	s.View(func(v *View) { idx = v.TopicIndex(topic) })
	return idx
}

func globalIndex(s *Store) (idx uint64) {
	s.View(func(v *View) { idx = v.Index() })
	return idx
}

func regWeb(t *testing.T, s *Store, id, name string, checks ...*Check) {
	t.Helper()
	svc := &Service{ID: id, Service: name, Port: 8080, Tags: []string{"v1"}, Weights: Weights{1, 1}}
	if err := s.RegisterAgentService(ctx(t), svc, checks, false); err != nil {
		t.Fatalf("RegisterAgentService %s: %v", id, err)
	}
}

func TestLocalNodeAndSerfHealth(t *testing.T) {
	s := openStore(t, t.TempDir())
	s.View(func(v *View) {
		n := v.Node("node1")
		if n == nil || n.Address != "127.0.0.1" || n.Datacenter != "dc1" || n.ID == "" {
			t.Fatalf("local node = %+v", n)
		}
		c := v.Check("node1", SerfCheckID)
		if c == nil || c.Status != HealthPassing {
			t.Fatalf("serfHealth = %+v", c)
		}
		if v.Index() < 1 {
			t.Fatalf("index = %d, want >= 1", v.Index())
		}
	})
}

func TestTopicIsolationAndWatch(t *testing.T) {
	s := openStore(t, t.TempDir())
	regWeb(t, s, "web1", "web")
	regWeb(t, s, "db1", "db")
	webIdx := topicIndex(s, TopicHealthService("web"))

	var ch <-chan struct{}
	var release func()
	s.View(func(v *View) { ch, release = v.Watch(TopicHealthService("web")) })
	defer release()

	// A change to db must neither raise web's index nor wake web's watchers.
	regWeb(t, s, "db2", "db")
	if got := topicIndex(s, TopicHealthService("web")); got != webIdx {
		t.Fatalf("web index moved on a db change: %d -> %d", webIdx, got)
	}
	select {
	case <-ch:
		t.Fatal("web watcher woken by a db change")
	default:
	}
	// A change to web does both.
	regWeb(t, s, "web2", "web")
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("web watcher not woken by a web change")
	}
	if got := topicIndex(s, TopicHealthService("web")); got <= webIdx {
		t.Fatalf("web index did not rise: %d -> %d", webIdx, got)
	}
}

func TestIdempotentWriteRaisesNothing(t *testing.T) {
	s := openStore(t, t.TempDir())
	regWeb(t, s, "web1", "web")
	before := globalIndex(s)
	regWeb(t, s, "web1", "web")
	if after := globalIndex(s); after != before {
		t.Fatalf("identical re-registration raised the index %d -> %d", before, after)
	}
}

func TestDeletionRaisesIndex(t *testing.T) {
	s := openStore(t, t.TempDir())
	regWeb(t, s, "web1", "web")
	regWeb(t, s, "web2", "web")
	i1 := topicIndex(s, TopicHealthService("web"))
	if err := s.DeregisterAgentService(ctx(t), "web2"); err != nil {
		t.Fatal(err)
	}
	i2 := topicIndex(s, TopicHealthService("web"))
	if i2 <= i1 {
		t.Fatalf("deleting the newest instance did not raise the index: %d -> %d", i1, i2)
	}
	if err := s.DeregisterAgentService(ctx(t), "web1"); err != nil {
		t.Fatal(err)
	}
	if i3 := topicIndex(s, TopicHealthService("web")); i3 <= i2 {
		t.Fatalf("deleting the last instance did not raise the index: %d -> %d", i2, i3)
	}
	if err := s.DeregisterAgentService(ctx(t), "web1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deregistering a missing service: %v, want ErrNotFound", err)
	}
}

func TestKVPrefixIndexWithTombstones(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := ctx(t)
	for _, k := range []string{"app/a", "app/b", "other"} {
		if _, err := s.KVPut(c, k, []byte("x"), 0, nil); err != nil {
			t.Fatal(err)
		}
	}
	prefixIdx := func() (i uint64) { s.View(func(v *View) { i = v.KVPrefixIndex("app/") }); return }
	i1 := prefixIdx()
	var ch <-chan struct{}
	var release func()
	s.View(func(v *View) { ch, release = v.WatchKVPrefix("app/") })
	defer release()
	if _, err := s.KVDelete(c, "app/b", false, nil); err != nil { // the newest key of the prefix
		t.Fatal(err)
	}
	if i2 := prefixIdx(); i2 <= i1 {
		t.Fatalf("deleting the newest key did not raise the prefix index: %d -> %d", i1, i2)
	}
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("prefix watcher not woken")
	}
	var n int
	s.View(func(v *View) { n = len(v.KVList("app/")) })
	if n != 1 {
		t.Fatalf("KVList(app/) has %d keys, want 1", n)
	}
}

func TestKVCAS(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := ctx(t)
	zero := uint64(0)
	// 20 concurrent create-if-absent writers: exactly one wins. Each is validated against the
	// writes grouped before it in the same commit.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := s.KVPut(c, "lock", []byte(fmt.Sprint(i)), 0, &zero)
			if err != nil {
				t.Error(err)
			}
			if ok {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d create-if-absent writers won, want 1", wins)
	}
	var p *KVPair
	s.View(func(v *View) { p = v.KV("lock") })
	bad := p.ModifyIndex + 100
	if ok, _ := s.KVPut(c, "lock", []byte("y"), 0, &bad); ok {
		t.Fatal("CAS with a wrong index succeeded")
	}
	mi := p.ModifyIndex
	if ok, _ := s.KVPut(c, "lock", []byte("y"), 7, &mi); !ok {
		t.Fatal("CAS with the right index failed")
	}
	if ok, _ := s.KVDelete(c, "lock", false, &mi); ok {
		t.Fatal("delete-CAS with a stale index succeeded")
	}
}

func TestPersistenceAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	c := ctx(t)
	regWeb(t, s, "web1", "web", &Check{CheckID: "ttl", Name: "ttl", Type: CheckTypeTTL, Managed: true,
		Definition: CheckDefinition{TTL: 10 * time.Second}})
	if err := s.CatalogRegister(c, &CatalogRegistration{
		Node:    Node{Node: "ext", Address: "10.0.0.9", Meta: map[string]string{"rack": "a"}},
		Service: &Service{ID: "db1", Service: "db", Port: 5432},
		Checks:  []*Check{{CheckID: "db-up", Name: "db", ServiceID: "db1", Status: HealthPassing}},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.KVPut(c, "cfg/x", []byte("1"), 42, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.KVPut(c, "cfg/gone", []byte("1"), 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.KVDelete(c, "cfg/gone", false, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.DeregisterAgentService(c, "web1"); err != nil {
		t.Fatal(err)
	}
	regWeb(t, s, "web2", "web")

	type snap struct {
		global, web, db, kvPrefix uint64
		nodes, services, checks   int
		kv                        *KVPair
	}
	take := func(s *Store) (out snap) {
		s.View(func(v *View) {
			out = snap{global: v.Index(), web: v.TopicIndex(TopicHealthService("web")),
				db: v.TopicIndex(TopicHealthService("db")), kvPrefix: v.KVPrefixIndex("cfg/"),
				nodes: len(v.Nodes()), services: len(v.AllServices()), checks: len(v.AllChecks()),
				kv: v.KV("cfg/x")}
		})
		return out
	}
	before := take(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}
	s2 := openStore(t, dir)
	after := take(s2)
	if before.global != after.global || before.web != after.web || before.db != after.db ||
		before.kvPrefix != after.kvPrefix || before.nodes != after.nodes ||
		before.services != after.services || before.checks != after.checks {
		t.Fatalf("state changed across reopen:\nbefore %+v\nafter  %+v", before, after)
	}
	if after.kv == nil || string(after.kv.Value) != "1" || after.kv.Flags != 42 || after.kv.ModifyIndex != before.kv.ModifyIndex {
		t.Fatalf("kv after reopen = %+v, before %+v", after.kv, before.kv)
	}
	regWeb(t, s2, "web3", "web")
	if got := topicIndex(s2, TopicHealthService("web")); got <= after.web || globalIndex(s2) <= after.global {
		t.Fatalf("indexes did not keep rising after reopen: web %d -> %d", after.web, got)
	}
}

func TestFailedCommitLeavesMemoryUnchanged(t *testing.T) {
	s := openStore(t, t.TempDir())
	regWeb(t, s, "web1", "web")
	before := globalIndex(s)
	s.commitHook = func() error { return errors.New("disk on fire") }
	err := s.RegisterAgentService(ctx(t), &Service{ID: "web2", Service: "web"}, nil, false)
	if err == nil {
		t.Fatal("write succeeded despite a failing commit")
	}
	s.commitHook = nil
	s.View(func(v *View) {
		if v.Service("node1", "web2") != nil || v.Index() != before {
			t.Fatalf("a failed commit changed memory: web2=%v index %d -> %d", v.Service("node1", "web2"), before, v.Index())
		}
	})
	regWeb(t, s, "web2", "web")
}

func TestInvalidWriteChangesNothing(t *testing.T) {
	s := openStore(t, t.TempDir())
	before := globalIndex(s)
	c := ctx(t)
	// The service is valid, the check's service is not: nothing may be applied.
	err := s.CatalogRegister(c, &CatalogRegistration{
		Node:    Node{Node: "ext", Address: "10.0.0.1"},
		Service: &Service{ID: "a", Service: "a"},
		Checks:  []*Check{{CheckID: "c", ServiceID: "nope"}},
	})
	var ie *InvalidError
	if !errors.As(err, &ie) || ie.Field != "Checks[0].ServiceID" {
		t.Fatalf("err = %v, want InvalidError on Checks[0].ServiceID", err)
	}
	s.View(func(v *View) {
		if v.Node("ext") != nil || v.Index() != before {
			t.Fatal("rejected catalog registration was half-applied")
		}
	})
	if err := s.CatalogDeregister(c, "node1", "", ""); err == nil {
		t.Fatal("deregistering the local node succeeded")
	}
	if err := s.RegisterAgentCheck(c, &Check{CheckID: "x", ServiceID: "missing"}); err == nil {
		t.Fatal("check for a missing service accepted")
	}
	if globalIndex(s) != before {
		t.Fatal("rejected writes raised the index")
	}
}

func TestConcurrentWritesAllDurable(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	c := ctx(t)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.KVPut(c, fmt.Sprintf("k/%03d", i), []byte("v"), 0, nil); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	s.Close()
	s2 := openStore(t, dir)
	s2.View(func(v *View) {
		if n := len(v.KVList("k/")); n != 200 {
			t.Fatalf("%d keys after reopen, want 200", n)
		}
	})
}

func TestReplaceExistingChecksAndStatusKept(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := ctx(t)
	ttl := func(id string) *Check {
		return &Check{CheckID: id, Name: id, Type: CheckTypeTTL, Managed: true, Definition: CheckDefinition{TTL: time.Minute}}
	}
	regWeb(t, s, "web1", "web", ttl("a"), ttl("b"))
	if err := s.UpdateCheck(c, "node1", "a", HealthPassing, "ok"); err != nil {
		t.Fatal(err)
	}
	// Re-register with only "a": without replace, "b" stays; "a" keeps its passing status.
	regWeb(t, s, "web1", "web", ttl("a"))
	s.View(func(v *View) {
		if v.Check("node1", "b") == nil {
			t.Fatal("check b removed without replace-existing-checks")
		}
		if st := v.Check("node1", "a").Status; st != HealthPassing {
			t.Fatalf("re-registration reset check a to %s", st)
		}
	})
	if err := s.RegisterAgentService(c, &Service{ID: "web1", Service: "web", Port: 8080, Tags: []string{"v1"}, Weights: Weights{1, 1}},
		[]*Check{ttl("a")}, true); err != nil {
		t.Fatal(err)
	}
	s.View(func(v *View) {
		if v.Check("node1", "b") != nil {
			t.Fatal("check b kept with replace-existing-checks")
		}
	})
}

// fakeClock is a manual clock: AfterFunc callbacks run when Advance passes their deadline.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	rest := c.timers[:0]
	for _, t := range c.timers {
		if !t.stopped && !t.at.After(c.now) {
			t.stopped = true
			due = append(due, t)
		} else if !t.stopped {
			rest = append(rest, t)
		}
	}
	c.timers = rest
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
}

func TestOutputOnlyChangesAreRateLimited(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1000, 0)}
	s := openStore(t, t.TempDir(), func(o *Options) { o.Clock = clk; o.CheckUpdateInterval = time.Minute })
	c := ctx(t)
	regWeb(t, s, "web1", "web", &Check{CheckID: "h", Name: "h", Type: CheckTypeTTL, Managed: true,
		Definition: CheckDefinition{TTL: time.Hour}})
	if err := s.UpdateCheck(c, "node1", "h", HealthPassing, "run 0"); err != nil {
		t.Fatal(err)
	}
	idx := topicIndex(s, TopicHealthService("web"))
	for i := 1; i <= 5; i++ {
		clk.Advance(time.Second)
		if err := s.UpdateCheck(c, "node1", "h", HealthPassing, fmt.Sprintf("run %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := topicIndex(s, TopicHealthService("web")); got != idx {
		t.Fatalf("output-only updates raised the index within the interval: %d -> %d", idx, got)
	}
	// When the interval has passed, the latest output is written once.
	clk.Advance(time.Minute)
	testutil.Eventually(t, 2*time.Second, 5*time.Millisecond, func() error {
		var out string
		s.View(func(v *View) { out = v.Check("node1", "h").Output })
		if out != "run 5" {
			return fmt.Errorf("output %q, want the latest %q", out, "run 5")
		}
		return nil
	})
	// A status change is written at once.
	idx = topicIndex(s, TopicHealthService("web"))
	if err := s.UpdateCheck(c, "node1", "h", HealthCritical, "down"); err != nil {
		t.Fatal(err)
	}
	if got := topicIndex(s, TopicHealthService("web")); got <= idx {
		t.Fatal("a status change was not written at once")
	}
}

func TestNodeRenameMovesAgentServices(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	regWeb(t, s, "web1", "web", &Check{CheckID: "t", Name: "t", Type: CheckTypeTTL, Managed: true, Definition: CheckDefinition{TTL: time.Minute}})
	s.Close()
	s2 := openStore(t, dir, func(o *Options) { o.NodeName = "node2"; o.NodeAddress = "127.0.0.2" })
	s2.View(func(v *View) {
		if v.Node("node1") != nil {
			t.Fatal("old local node kept")
		}
		if n := v.Node("node2"); n == nil || n.Address != "127.0.0.2" {
			t.Fatalf("new local node = %+v", n)
		}
		if v.Service("node2", "web1") == nil || v.Check("node2", "t") == nil || v.Check("node2", SerfCheckID) == nil {
			t.Fatal("agent service, check or serfHealth not moved to the new node name")
		}
	})
}

func TestWatchReleaseAndClose(t *testing.T) {
	s := openStore(t, t.TempDir())
	var release func()
	var ch <-chan struct{}
	s.View(func(v *View) { ch, release = v.Watch(TopicHealthService("x")) })
	if s.Watchers() != 1 {
		t.Fatalf("Watchers = %d, want 1", s.Watchers())
	}
	release()
	release()
	if s.Watchers() != 0 {
		t.Fatalf("Watchers after release = %d, want 0", s.Watchers())
	}
	s.View(func(v *View) { ch, release = v.Watch(TopicHealthService("x")) })
	defer release()
	s.Close()
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("Close did not wake watchers")
	}
	if err := s.DeregisterAgentService(ctx(t), "x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after Close = %v, want ErrClosed", err)
	}
}

func BenchmarkKVPutParallel(b *testing.B) {
	s, err := Open(context.Background(), Options{Dir: b.TempDir(), NodeName: "n"})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	var n sync.Mutex
	i := 0
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n.Lock()
			i++
			k := fmt.Sprintf("k%d", i)
			n.Unlock()
			if _, err := s.KVPut(context.Background(), k, []byte("v"), 0, nil); err != nil {
				b.Error(err)
			}
		}
	})
}

func TestInstanceChecksIndex(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	c := ctx(t)
	ttl := func(id string) *Check {
		return &Check{CheckID: id, Name: id, Type: CheckTypeTTL, Managed: true, Definition: CheckDefinition{TTL: time.Minute}}
	}
	regWeb(t, s, "a", "web", ttl("c1"), ttl("c2"))
	regWeb(t, s, "b", "web")
	if err := s.RegisterAgentCheck(c, ttl("n1")); err != nil { // node-level
		t.Fatal(err)
	}
	moved := ttl("c1")
	moved.ServiceID = "b"
	if err := s.RegisterAgentCheck(c, moved); err != nil { // c1 moves from a to b
		t.Fatal(err)
	}
	ids := func(s *Store, svc string) (out string) {
		s.View(func(v *View) {
			for _, c := range v.InstanceChecks(v.Service("node1", svc)) {
				out += c.CheckID + " "
			}
		})
		return out
	}
	want := map[string]string{"a": "n1 serfHealth c2 ", "b": "n1 serfHealth c1 "}
	for svc, w := range want {
		if got := ids(s, svc); got != w {
			t.Fatalf("InstanceChecks(%s) = %q, want %q", svc, got, w)
		}
	}
	if err := s.DeregisterAgentService(c, "b"); err != nil {
		t.Fatal(err)
	}
	s.View(func(v *View) {
		if v.Check("node1", "c1") != nil {
			t.Fatal("deregistering b kept its moved check c1")
		}
	})
	s.Close()
	s2 := openStore(t, dir)
	if got := ids(s2, "a"); got != want["a"] {
		t.Fatalf("after reopen InstanceChecks(a) = %q", got)
	}
}

// A service renamed under the same ID keeps its other checks, whose stored ServiceName still
// says the old name (as in Consul). Changes to those checks must raise the topics of the name
// the service has now, or watchers of the new name never see them and its index stays put.
func TestRenamedServiceChecksRaiseCurrentName(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := ctx(t)
	reg := func(name string, checks ...*Check) {
		t.Helper()
		err := s.CatalogRegister(c, &CatalogRegistration{Node: Node{Node: "n1", Address: "10.0.0.1"},
			Service: &Service{ID: "s1", Service: name, Port: 80}, Checks: checks})
		if err != nil {
			t.Fatal(err)
		}
	}
	reg("a", &Check{CheckID: "c1", ServiceID: "s1", Status: HealthPassing})
	reg("b")
	before := topicIndex(s, TopicHealthService("b"))
	var ch <-chan struct{}
	var release func()
	s.View(func(v *View) { ch, release = v.Watch(TopicHealthService("b")) })
	defer release()
	if err := s.CatalogDeregister(c, "n1", "", "c1"); err != nil {
		t.Fatal(err)
	}
	if after := topicIndex(s, TopicHealthService("b")); after <= before {
		t.Errorf("deleting a check of the renamed service left %s at %d", TopicHealthService("b"), after)
	}
	select {
	case <-ch:
	default:
		t.Error("deleting a check of the renamed service did not wake its watchers")
	}

	// An agent service renamed through the catalog: a TTL update of its check shows under the
	// new name, and the rewritten check carries the service's current name, as Consul's
	// check writes do.
	regWeb(t, s, "w1", "old", &Check{CheckID: "ttl1", Name: "ttl1", Type: CheckTypeTTL, Managed: true,
		Definition: CheckDefinition{TTL: time.Minute}})
	err := s.CatalogRegister(c, &CatalogRegistration{Node: Node{Node: "node1", Address: "127.0.0.1"}, SkipNodeUpdate: true,
		Service: &Service{ID: "w1", Service: "new", Port: 8080}})
	if err != nil {
		t.Fatal(err)
	}
	before = topicIndex(s, TopicHealthService("new"))
	if err := s.UpdateCheck(c, "node1", "ttl1", HealthPassing, "ok"); err != nil {
		t.Fatal(err)
	}
	if after := topicIndex(s, TopicHealthService("new")); after <= before {
		t.Errorf("a TTL pass of the renamed service left %s at %d", TopicHealthService("new"), after)
	}
	s.View(func(v *View) {
		if ck := v.Check("node1", "ttl1"); ck.ServiceName != "new" || ck.Status != HealthPassing {
			t.Errorf("check after the update: %+v", ck)
		}
	})
}

// Rows are stored under node+"\x00"+id, so a NUL (or any control character) in a node name or
// an ID would let two acknowledged rows share one key and one of them vanish at the next
// restart. Such names are rejected, naming the field; the rows that were accepted survive a
// reopen intact.
func TestControlCharactersInNamesRejected(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	c := ctx(t)
	node := func(name string) Node { return Node{Node: name, Address: "10.0.0.1"} }
	ttl := func(id, name string) *Check {
		return &Check{CheckID: id, Name: name, Type: CheckTypeTTL, Managed: true, Definition: CheckDefinition{TTL: time.Minute}}
	}
	cases := []struct {
		field string
		err   error
	}{
		{"Node", s.CatalogRegister(c, &CatalogRegistration{Node: node("a\x00b"), Service: &Service{ID: "c", Service: "s1"}})},
		{"Service.ID", s.CatalogRegister(c, &CatalogRegistration{Node: node("a"), Service: &Service{ID: "b\x00c", Service: "s2"}})},
		{"Service.Service", s.CatalogRegister(c, &CatalogRegistration{Node: node("a"), Service: &Service{ID: "x", Service: "s\n"}})},
		{"Checks[0].CheckID", s.CatalogRegister(c, &CatalogRegistration{Node: node("a"), Checks: []*Check{{CheckID: "c\x7f", Name: "c"}}})},
		{"Checks[0].Name", s.CatalogRegister(c, &CatalogRegistration{Node: node("a"), Checks: []*Check{{CheckID: "c", Name: "c\x1b[31m"}}})},
		{"Checks[0].ServiceID", s.CatalogRegister(c, &CatalogRegistration{Node: node("a"), Checks: []*Check{{CheckID: "c", Name: "c", ServiceID: "x\x00"}}})},
		{"ID", s.RegisterAgentService(c, &Service{ID: "w\x00", Service: "web"}, nil, false)},
		{"Name", s.RegisterAgentService(c, &Service{ID: "w", Service: "w\u0085eb"}, nil, false)},
		{"Checks[0].CheckID", s.RegisterAgentService(c, &Service{ID: "w", Service: "web"}, []*Check{ttl("t\x00", "t")}, false)},
		{"Checks[0].Name", s.RegisterAgentService(c, &Service{ID: "w", Service: "web"}, []*Check{ttl("t", "t\r")}, false)},
		{"CheckID", s.RegisterAgentCheck(c, ttl("t\x00", "t"))},
		{"Name", s.RegisterAgentCheck(c, ttl("t", "\xff"))},
	}
	for i, tc := range cases {
		var ie *InvalidError
		if !errors.As(tc.err, &ie) || ie.Field != tc.field {
			t.Errorf("case %d: err %v, want an InvalidError for %s", i, tc.err, tc.field)
		}
	}
	if _, err := Open(c, Options{Dir: t.TempDir(), NodeName: "n\x00"}); err == nil {
		t.Error("Open accepted a node name with a NUL")
	}

	// Names that are merely unusual are kept, and survive a restart.
	if err := s.CatalogRegister(c, &CatalogRegistration{Node: node("a b"), Service: &Service{ID: "c:d/é", Service: "s 1"}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2 := openStore(t, dir)
	s2.View(func(v *View) {
		if sv := v.Service("a b", "c:d/é"); sv == nil || sv.Service != "s 1" {
			t.Fatalf("after reopen: %+v", v.AllServices())
		}
	})
}

// An update that changes nothing as far as the committed state shows may still change
// something once the writes queued before it are applied: a TTL pass arriving while the
// check's expiry ("critical") is being committed must leave the check passing, whether its
// output is the same (no-op) or new (an output-only change, normally held back).
func TestCheckUpdateOrderedAfterQueuedWrites(t *testing.T) {
	for _, tc := range []struct{ name, output string }{{"same output", "ok"}, {"new output", "ok again"}} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, t.TempDir(), func(o *Options) { o.CheckUpdateInterval = time.Minute })
			c := ctx(t)
			regWeb(t, s, "web1", "web", &Check{CheckID: "ttl", Name: "ttl", Type: CheckTypeTTL, Managed: true,
				Definition: CheckDefinition{TTL: time.Minute}})
			if err := s.UpdateCheck(c, "node1", "ttl", HealthPassing, "ok"); err != nil {
				t.Fatal(err)
			}
			// Hold the next commit (the expiry's) until the pass has been sent.
			entered, gate := make(chan struct{}), make(chan struct{})
			var once sync.Once
			s.commitHook = func() error {
				once.Do(func() { close(entered); <-gate })
				return nil
			}
			expired := make(chan error, 1)
			go func() { expired <- s.UpdateCheck(c, "node1", "ttl", HealthCritical, "TTL expired") }()
			<-entered
			passed := make(chan error, 1)
			go func() { passed <- s.UpdateCheck(c, "node1", "ttl", HealthPassing, tc.output) }()
			timer := time.NewTimer(100 * time.Millisecond)
			select {
			case err := <-passed:
				passed <- err // answered before the expiry committed: the bug, unless it is ordered
			case <-timer.C:
			}
			close(gate)
			if err := <-expired; err != nil {
				t.Fatal(err)
			}
			if err := <-passed; err != nil {
				t.Fatal(err)
			}
			s.View(func(v *View) {
				if ck := v.Check("node1", "ttl"); ck.Status != HealthPassing {
					t.Fatalf("after an acknowledged pass the check is %s %q", ck.Status, ck.Output)
				}
			})
		})
	}
}

func TestReapAgentService(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1000, 0)}
	s := openStore(t, t.TempDir(), func(o *Options) { o.Clock = clk })
	c := ctx(t)
	ttl := func(id string) *Check {
		return &Check{CheckID: id, Name: id, Type: CheckTypeTTL, Managed: true,
			Definition: CheckDefinition{TTL: time.Hour, DeregisterCriticalServiceAfter: time.Minute}}
	}
	regWeb(t, s, "a", "web", ttl("a-ttl"))
	regWeb(t, s, "b", "web", ttl("b-ttl"))
	clk.Advance(2 * time.Minute)
	if err := s.UpdateCheck(c, "node1", "b-ttl", HealthPassing, "back"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id       string
		minAfter time.Duration
		want     bool
	}{{"b", 0, false}, {"a", time.Hour, false}, {"a", 0, true}, {"a", 0, false}} {
		got, err := s.ReapAgentService(c, tc.id, tc.minAfter)
		if err != nil || got != tc.want {
			t.Fatalf("ReapAgentService(%s, min %v) = %v, %v; want %v", tc.id, tc.minAfter, got, err, tc.want)
		}
	}
	s.View(func(v *View) {
		if v.Service("node1", "a") != nil || v.Check("node1", "a-ttl") != nil || v.Service("node1", "b") == nil {
			t.Fatal("reaped the wrong services")
		}
	})
}

// A check change raises the node's checks topic (health/node), not its node topic
// (catalog/node: the node and its services). A store written before the checks topic
// existed starts it from the node topic, so health/node's index does not go back.
func TestNodeTopicsSplit(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	c := ctx(t)
	regWeb(t, s, "web1", "web", &Check{CheckID: "ttl", Name: "ttl", Type: CheckTypeTTL, Managed: true,
		Definition: CheckDefinition{TTL: time.Minute}})
	node, checks := topicIndex(s, TopicNode("node1")), topicIndex(s, TopicNodeChecks("node1"))
	if err := s.UpdateCheck(c, "node1", "ttl", HealthPassing, "ok"); err != nil {
		t.Fatal(err)
	}
	if got := topicIndex(s, TopicNode("node1")); got != node {
		t.Errorf("a check change raised %s: %d -> %d", TopicNode("node1"), node, got)
	}
	if got := topicIndex(s, TopicNodeChecks("node1")); got <= checks {
		t.Errorf("a check change left %s at %d", TopicNodeChecks("node1"), got)
	}
	regWeb(t, s, "web2", "web")
	if got := topicIndex(s, TopicNode("node1")); got <= node {
		t.Errorf("a new service left %s at %d", TopicNode("node1"), got)
	}

	// An older store: no checks topic, its node topic carries the check changes.
	want := topicIndex(s, TopicNodeChecks("node1"))
	s.Close()
	db, err := bolt.Open(filepath.Join(dir, DBFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(b *bolt.Tx) error {
		tb := b.Bucket(bucketTopics)
		if err := tb.Put([]byte(TopicNode("node1")), u64(want)); err != nil {
			return err
		}
		return tb.Delete([]byte(TopicNodeChecks("node1")))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir)
	if got := topicIndex(s2, TopicNodeChecks("node1")); got < want {
		t.Fatalf("after upgrading, %s = %d, was %d", TopicNodeChecks("node1"), got, want)
	}
}

// Creating the database file (and the data directory) is made durable too: the directories
// whose entries changed are fsynced, so a crash right after the first acknowledged write
// cannot lose the file itself.
func TestCreationSyncsDirectories(t *testing.T) {
	var synced []string
	prev := syncDir
	syncDir = func(dir string) error {
		synced = append(synced, dir)
		return prev(dir)
	}
	t.Cleanup(func() { syncDir = prev })
	root := t.TempDir()
	dir := filepath.Join(root, "a", "data")
	s := openStore(t, dir)
	want := []string{dir, filepath.Join(root, "a"), root}
	if fmt.Sprint(synced) != fmt.Sprint(want) {
		t.Fatalf("synced %q, want %q", synced, want)
	}
	s.Close()
	synced = nil
	openStore(t, dir)
	if len(synced) != 0 {
		t.Fatalf("reopening an existing store synced %q", synced)
	}
}

package state

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/podmesh/podmesh/tls/authz"
	"github.com/podmesh/podmesh/tls/ca"
)

// Bucket names in the bbolt file.
var (
	bucketMeta       = []byte("meta")
	bucketNodes      = []byte("nodes")
	bucketServices   = []byte("services")
	bucketChecks     = []byte("checks")
	bucketKV         = []byte("kv")
	bucketTopics     = []byte("topics")
	bucketCA         = []byte("ca")
	bucketIntentions = []byte("intentions")

	allBuckets = [][]byte{bucketMeta, bucketNodes, bucketServices, bucketChecks, bucketKV, bucketTopics, bucketCA, bucketIntentions}

	metaIndex     = []byte("index")
	metaLocalNode = []byte("local-node")
	metaSchema    = []byte("schema")
)

const schemaVersion = "1"

// DBFile is the name of the bbolt file inside the data directory.
const DBFile = "registry.db"

// DefaultCheckUpdateInterval is how often at most an output-only change of a check (same
// status, new output) is written and published, as Consul's check_update_interval.
const DefaultCheckUpdateInterval = 5 * time.Minute

// maxBatch bounds how many queued writes one bbolt transaction commits together.
const maxBatch = 512

// Errors returned by the store.
var (
	// ErrNotFound: the service, check or node named by a write does not exist.
	ErrNotFound = errors.New("not found")
	// ErrClosed: the store is closed.
	ErrClosed = net.ErrClosed
)

// Options configure a Store. The zero value of every field but Dir and NodeName is a default.
type Options struct {
	// Dir is the data directory; the store keeps one bbolt file, DBFile, in it.
	Dir string
	// Datacenter of the local node; default "dc1".
	Datacenter string
	// NodeName names the local node, which carries the agent services and a permanent
	// passing serfHealth check.
	NodeName string
	// NodeAddress is the local node's address; default 127.0.0.1.
	NodeAddress string
	// CheckUpdateInterval bounds how often an output-only check change is written; default
	// DefaultCheckUpdateInterval. A negative value writes every change at once.
	CheckUpdateInterval time.Duration
	// CA configures the mesh certificate authority on first start.
	CA CAOptions
	// Clock defaults to the wall clock.
	Clock Clock
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Datacenter == "" {
		o.Datacenter = "dc1"
	}
	if o.NodeAddress == "" {
		o.NodeAddress = "127.0.0.1"
	}
	if o.CheckUpdateInterval == 0 {
		o.CheckUpdateInterval = DefaultCheckUpdateInterval
	}
	if o.Clock == nil {
		o.Clock = RealClock
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

func (o Options) validate() error {
	switch {
	case o.Dir == "":
		return errors.New("state: Options.Dir is empty")
	case o.NodeName == "":
		return errors.New("state: Options.NodeName is empty")
	}
	if err := ValidateName("NodeName", o.NodeName); err != nil {
		return fmt.Errorf("state: Options.%w", err)
	}
	return nil
}

// memState is the in-memory catalog. It is mutated only by the committer goroutine, under
// Store.mu's write lock, after the bbolt transaction holding the same change has committed.
// Rows are immutable once stored: readers may keep the pointers.
type memState struct {
	index     uint64
	localNode string

	nodes    map[string]*Node
	services map[serviceKey]*Service
	checks   map[checkKey]*Check
	kv       map[string]*KVPair
	topics   map[string]uint64

	kvKeys      []string // live keys, sorted
	kvTopicKeys []string // keys with a topic index (live or deleted), sorted

	byName       map[string]map[serviceKey]*Service
	byNode       map[string]map[string]*Service
	checksByNode map[string]map[string]*Check
	// checksBySvc holds each service's checks; node-level checks are under the service ID "".
	checksBySvc   map[serviceKey]map[string]*Check
	criticalSince map[checkKey]time.Time

	ca *caRecord // nil only while Open creates the CA

	intentions map[string]*authz.Intention // by pair key
	ixnByID    map[string]string           // ID → pair key
	// ixnByDst and ixnBySrc hold the intentions by destination and source name ("*"
	// included as a name).
	ixnByDst map[string]map[string]*authz.Intention
	ixnBySrc map[string]map[string]*authz.Intention
}

func newMemState() *memState {
	return &memState{
		nodes:         map[string]*Node{},
		services:      map[serviceKey]*Service{},
		checks:        map[checkKey]*Check{},
		kv:            map[string]*KVPair{},
		topics:        map[string]uint64{},
		byName:        map[string]map[serviceKey]*Service{},
		byNode:        map[string]map[string]*Service{},
		checksByNode:  map[string]map[string]*Check{},
		checksBySvc:   map[serviceKey]map[string]*Check{},
		criticalSince: map[checkKey]time.Time{},
		intentions:    map[string]*authz.Intention{},
		ixnByID:       map[string]string{},
		ixnByDst:      map[string]map[string]*authz.Intention{},
		ixnBySrc:      map[string]map[string]*authz.Intention{},
	}
}

// Store is the registry's durable catalog and KV store.
//
// Writes are serialized through one committer goroutine that groups whatever writes are
// queued into a single bbolt transaction (group commit: one fsync for many writers), applies
// each to an overlay of the current state (validating it against the state including the
// earlier writes of the same group), commits the group, and only then applies it to memory,
// publishes it to readers and answers the writers. A write whose validation fails changes
// nothing; a failed commit fails every write of the group and leaves memory unchanged.
// bbolt's own Batch is not used: it may run a function twice and reorders nothing for us,
// while the registry needs each write validated against every write acknowledged before it.
type Store struct {
	opts Options
	db   *bolt.DB
	log  *slog.Logger

	mu sync.RWMutex // guards st
	st *memState

	watchMu       sync.Mutex
	watches       map[string]*watchEntry
	prefixWatches map[string]*watchEntry
	// multiWatches are watches of several topics at once, keyed by the topics joined with
	// "\x00"; topicMulti lists, per topic, the keys of the multi-watches that include it.
	multiWatches map[string]*watchEntry
	topicMulti   map[string]map[string]struct{}

	// caMu is held shared while a leaf is issued and committed, exclusively while the CA is
	// rotated, reconfigured or pruned (see ca.go). It guards the ca pointer.
	caMu sync.RWMutex
	ca   *ca.CA

	reqs      chan *writeReq
	quit      chan struct{}
	done      chan struct{}
	ctx       context.Context // lives until Close; for the store's own deferred writes
	cancel    context.CancelFunc
	closeOnce sync.Once

	outMu    sync.Mutex
	lastOut  map[checkKey]time.Time    // last write of each check's status or output
	deferred map[checkKey]*deferredOut // output-only changes waiting for CheckUpdateInterval

	// commitHook, when set (tests), runs inside every bbolt write transaction; an error
	// fails the commit.
	commitHook func() error
}

type writeReq struct {
	fn   func(tx *Txn) error
	done chan error
}

// Open opens (creating if needed) the store in opts.Dir, loads it, and makes sure the local
// node and its serfHealth check exist and match opts.
//
// ctx bounds only the opening; the store lives until Close.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	newDirs := missingDirs(opts.Dir)
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("state: create data dir %q: %w", opts.Dir, err)
	}
	path := filepath.Join(opts.Dir, DBFile)
	_, statErr := os.Stat(path)
	fresh := errors.Is(statErr, fs.ErrNotExist)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("state: open %q: locked by another process: %w", path, err)
		}
		return nil, fmt.Errorf("state: open %q: %w", path, err)
	}
	s := &Store{
		opts:          opts,
		db:            db,
		log:           opts.Logger,
		watches:       map[string]*watchEntry{},
		prefixWatches: map[string]*watchEntry{},
		multiWatches:  map[string]*watchEntry{},
		topicMulti:    map[string]map[string]struct{}{},
		reqs:          make(chan *writeReq, 4096),
		quit:          make(chan struct{}),
		done:          make(chan struct{}),
		lastOut:       map[checkKey]time.Time{},
		deferred:      map[checkKey]*deferredOut{},
	}
	st, err := s.load()
	if err != nil {
		db.Close()
		return nil, err
	}
	if fresh {
		// bbolt fsyncs the file, not the directory entries that make it (and the data
		// directory) exist: without this a crash could lose the whole new store.
		for _, d := range append([]string{opts.Dir}, parents(newDirs)...) {
			if err := syncDir(d); err != nil {
				db.Close()
				return nil, fmt.Errorf("state: sync directory %q after creating %q: %w", d, path, err)
			}
		}
	}
	s.st = st
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	go s.commitLoop()
	if err := s.ensureLocalNode(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.ensureCA(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// syncDir fsyncs a directory, making the entries created in it durable. Tests replace it.
var syncDir = func(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// missingDirs returns dir and those of its ancestors that do not exist yet, deepest first.
func missingDirs(dir string) []string {
	var out []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			return out
		}
		out = append(out, d)
		if filepath.Dir(d) == d {
			return out
		}
	}
}

// parents returns the parent directory of each of dirs.
func parents(dirs []string) []string {
	out := make([]string, len(dirs))
	for i, d := range dirs {
		out[i] = filepath.Dir(d)
	}
	return out
}

// Close stops the store. Queued writes fail with ErrClosed; blocked watchers are woken. A
// second Close returns net.ErrClosed.
func (s *Store) Close() error {
	err := ErrClosed
	s.closeOnce.Do(func() {
		s.cancel()
		close(s.quit)
		<-s.done
		s.outMu.Lock()
		for k, d := range s.deferred {
			d.stop()
			delete(s.deferred, k)
		}
		s.outMu.Unlock()
		s.watchMu.Lock()
		for t, w := range s.watches {
			w.fire()
			delete(s.watches, t)
		}
		for p, w := range s.prefixWatches {
			w.fire()
			delete(s.prefixWatches, p)
		}
		for k, w := range s.multiWatches {
			w.fire()
			s.removeMultiLocked(k)
		}
		s.watchMu.Unlock()
		err = s.db.Close()
	})
	return err
}

// Closed returns a channel that is closed when Close begins. Watches registered after that
// fire at once, so a loop that waits on a watch must also stop when this is closed.
func (s *Store) Closed() <-chan struct{} { return s.quit }

// Now is the store's clock, which also stamps View.CriticalSince.
func (s *Store) Now() time.Time { return s.opts.Clock.Now() }

// LocalNode returns the name of the local node.
func (s *Store) LocalNode() string { return s.opts.NodeName }

// Datacenter returns the local datacenter.
func (s *Store) Datacenter() string { return s.opts.Datacenter }

// write queues fn and waits until the group it is committed with is on disk and visible.
// fn must validate everything before it mutates tx; if it returns an error, whatever it did
// mutate is undone.
func (s *Store) write(ctx context.Context, fn func(tx *Txn) error) error {
	req := &writeReq{fn: fn, done: make(chan error, 1)}
	select {
	case <-s.quit:
		return ErrClosed
	default:
	}
	select {
	case s.reqs <- req:
	case <-s.quit:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued the write may commit, so wait for the verdict even if ctx ends: a caller
	// must not report failure for a write that is on disk.
	select {
	case err := <-req.done:
		return err
	case <-s.done:
		// The committer has stopped; it answered every request it took.
		select {
		case err := <-req.done:
			return err
		default:
			return ErrClosed
		}
	}
}

func (s *Store) commitLoop() {
	defer close(s.done)
	for {
		var first *writeReq
		select {
		case first = <-s.reqs:
		case <-s.quit:
			s.failQueued()
			return
		}
		batch := []*writeReq{first}
	drain:
		for len(batch) < maxBatch {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		s.commitBatch(batch)
	}
}

func (s *Store) failQueued() {
	for {
		select {
		case r := <-s.reqs:
			r.done <- ErrClosed
		default:
			return
		}
	}
}

// commitBatch runs each request against an overlay of the committed state, commits all
// successful ones in one bbolt transaction, applies them to memory and wakes watchers.
func (s *Store) commitBatch(batch []*writeReq) {
	tx := newTxn(s.st, s.opts.NodeName)
	errs := make([]error, len(batch))
	for i, r := range batch {
		tx.begin()
		if err := runFn(r.fn, tx); err != nil {
			tx.rollback()
			errs[i] = err
			continue
		}
		tx.keep()
	}
	if tx.empty() {
		for i, r := range batch {
			r.done <- errs[i]
		}
		return
	}
	if err := s.persist(tx); err != nil {
		err = fmt.Errorf("state: commit: %w", err)
		s.log.Error("commit failed; writes rejected", "writes", len(batch), "err", err)
		for i, r := range batch {
			if errs[i] == nil {
				errs[i] = err
			}
			r.done <- errs[i]
		}
		return
	}
	fire := s.apply(tx)
	for _, w := range fire {
		w.fire()
	}
	for i, r := range batch {
		r.done <- errs[i]
	}
}

// runFn runs one write function, turning a panic into an error so a bug in one write cannot
// take the committer (and every later write) down with it.
func runFn(fn func(*Txn) error, tx *Txn) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("state: write panicked: %v", p)
		}
	}()
	return fn(tx)
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func compositeKey(node, id string) []byte { return []byte(node + "\x00" + id) }

// persist writes the overlay to bbolt in one transaction; bbolt fsyncs on commit.
func (s *Store) persist(tx *Txn) error {
	return s.db.Update(func(b *bolt.Tx) error {
		if s.commitHook != nil {
			if err := s.commitHook(); err != nil {
				return err
			}
		}
		put := func(bucket []byte, key []byte, v any) error {
			bk := b.Bucket(bucket)
			if v == nil {
				return bk.Delete(key)
			}
			data, err := json.Marshal(v)
			if err != nil {
				return fmt.Errorf("encode %s/%q: %w", bucket, key, err)
			}
			return bk.Put(key, data)
		}
		for name, n := range tx.nodes {
			if err := put(bucketNodes, []byte(name), nilIfNil(n)); err != nil {
				return err
			}
		}
		for k, v := range tx.services {
			if err := put(bucketServices, compositeKey(k.Node, k.ID), nilIfNil(v)); err != nil {
				return err
			}
		}
		for k, v := range tx.checks {
			if err := put(bucketChecks, compositeKey(k.Node, k.ID), nilIfNil(v)); err != nil {
				return err
			}
		}
		for k, v := range tx.kv {
			if err := put(bucketKV, []byte(k), nilIfNil(v)); err != nil {
				return err
			}
		}
		for k, v := range tx.intentions {
			if err := put(bucketIntentions, []byte(k), nilIfNil(v)); err != nil {
				return err
			}
		}
		if tx.caSet {
			cb := b.Bucket(bucketCA)
			if err := cb.Put(caKeyState, tx.ca.state); err != nil {
				return err
			}
			if err := put(bucketCA, caKeyRoots, tx.ca.roots); err != nil {
				return err
			}
			if err := put(bucketCA, caKeyConfig, tx.ca.config); err != nil {
				return err
			}
		}
		tb := b.Bucket(bucketTopics)
		for t, idx := range tx.topics {
			if err := tb.Put([]byte(t), u64(idx)); err != nil {
				return err
			}
		}
		meta := b.Bucket(bucketMeta)
		if err := meta.Put(metaIndex, u64(tx.lastIndex)); err != nil {
			return err
		}
		return meta.Put(metaLocalNode, []byte(s.opts.NodeName))
	})
}

// nilIfNil turns a typed nil pointer into an untyped nil, so persist deletes the row.
func nilIfNil[T any](p *T) any {
	if p == nil {
		return nil
	}
	return p
}

// apply installs a committed overlay into memory and returns the watchers to wake.
func (s *Store) apply(tx *Txn) []*watchEntry {
	now := s.opts.Clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	for name, n := range tx.nodes {
		if n == nil {
			delete(st.nodes, name)
		} else {
			st.nodes[name] = n
		}
	}
	for k, v := range tx.services {
		if old := st.services[k]; old != nil {
			st.unindexService(old)
		}
		if v == nil {
			delete(st.services, k)
		} else {
			st.services[k] = v
			st.indexService(v)
		}
	}
	for k, v := range tx.checks {
		old := st.checks[k]
		if old != nil {
			st.unindexCheck(old)
		}
		if v == nil {
			delete(st.checks, k)
			delete(st.criticalSince, k)
			continue
		}
		st.checks[k] = v
		st.indexCheck(v)
		switch {
		case v.Status != HealthCritical:
			delete(st.criticalSince, k)
		case old == nil || old.Status != HealthCritical:
			st.criticalSince[k] = now
		}
	}
	changedKV := make([]string, 0, len(tx.kv))
	for k, v := range tx.kv {
		changedKV = append(changedKV, k)
		_, existed := st.kv[k]
		if v == nil {
			delete(st.kv, k)
			if existed {
				st.kvKeys = removeSorted(st.kvKeys, k)
			}
		} else {
			st.kv[k] = v
			if !existed {
				st.kvKeys = insertSorted(st.kvKeys, k)
			}
		}
	}
	for k, v := range tx.intentions {
		if old := st.intentions[k]; old != nil {
			st.unindexIntention(k, old)
		}
		if v == nil {
			delete(st.intentions, k)
		} else {
			st.intentions[k] = v
			st.indexIntention(k, v)
		}
	}
	if tx.caSet {
		st.ca = tx.ca
	}
	for t, idx := range tx.topics {
		if _, had := st.topics[t]; !had && strings.HasPrefix(t, kvTopicPrefix) {
			st.kvTopicKeys = insertSorted(st.kvTopicKeys, t[len(kvTopicPrefix):])
		}
		if idx > st.topics[t] {
			st.topics[t] = idx
		}
	}
	st.index = tx.lastIndex

	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	var fire []*watchEntry
	for t := range tx.topics {
		if w := s.watches[t]; w != nil {
			fire = append(fire, w)
			delete(s.watches, t)
		}
		for k := range s.topicMulti[t] {
			fire = append(fire, s.multiWatches[k])
			s.removeMultiLocked(k)
		}
	}
	for p, w := range s.prefixWatches {
		for _, k := range changedKV {
			if strings.HasPrefix(k, p) {
				fire = append(fire, w)
				delete(s.prefixWatches, p)
				break
			}
		}
	}
	return fire
}

func (st *memState) indexService(v *Service) {
	k := serviceKey{v.Node, v.ID}
	m := st.byName[v.Service]
	if m == nil {
		m = map[serviceKey]*Service{}
		st.byName[v.Service] = m
	}
	m[k] = v
	n := st.byNode[v.Node]
	if n == nil {
		n = map[string]*Service{}
		st.byNode[v.Node] = n
	}
	n[v.ID] = v
}

func (st *memState) unindexService(v *Service) {
	k := serviceKey{v.Node, v.ID}
	if m := st.byName[v.Service]; m != nil {
		delete(m, k)
		if len(m) == 0 {
			delete(st.byName, v.Service)
		}
	}
	if n := st.byNode[v.Node]; n != nil {
		delete(n, v.ID)
		if len(n) == 0 {
			delete(st.byNode, v.Node)
		}
	}
}

func (st *memState) indexCheck(c *Check) {
	m := st.checksByNode[c.Node]
	if m == nil {
		m = map[string]*Check{}
		st.checksByNode[c.Node] = m
	}
	m[c.CheckID] = c
	sk := serviceKey{c.Node, c.ServiceID}
	b := st.checksBySvc[sk]
	if b == nil {
		b = map[string]*Check{}
		st.checksBySvc[sk] = b
	}
	b[c.CheckID] = c
}

func (st *memState) unindexCheck(c *Check) {
	if m := st.checksByNode[c.Node]; m != nil {
		delete(m, c.CheckID)
		if len(m) == 0 {
			delete(st.checksByNode, c.Node)
		}
	}
	sk := serviceKey{c.Node, c.ServiceID}
	if b := st.checksBySvc[sk]; b != nil {
		delete(b, c.CheckID)
		if len(b) == 0 {
			delete(st.checksBySvc, sk)
		}
	}
}

func insertSorted(s []string, k string) []string {
	i, found := slices.BinarySearch(s, k)
	if found {
		return s
	}
	return slices.Insert(s, i, k)
}

func removeSorted(s []string, k string) []string {
	i, found := slices.BinarySearch(s, k)
	if !found {
		return s
	}
	return slices.Delete(s, i, i+1)
}

// load reads the whole bbolt file into memory, creating the buckets on first use.
func (s *Store) load() (*memState, error) {
	st := newMemState()
	err := s.db.Update(func(b *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := b.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := b.Bucket(bucketMeta)
		if v := meta.Get(metaSchema); v == nil {
			if err := meta.Put(metaSchema, []byte(schemaVersion)); err != nil {
				return err
			}
		} else if string(v) != schemaVersion {
			return fmt.Errorf("schema version %q, this registry reads %q", v, schemaVersion)
		}
		if v := meta.Get(metaIndex); len(v) == 8 {
			st.index = binary.BigEndian.Uint64(v)
		}
		st.localNode = string(meta.Get(metaLocalNode))
		decode := func(bucket []byte, k, v []byte, into any) error {
			if err := json.Unmarshal(v, into); err != nil {
				return fmt.Errorf("decode %s/%q: %w", bucket, k, err)
			}
			return nil
		}
		if err := b.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
			n := new(Node)
			if err := decode(bucketNodes, k, v, n); err != nil {
				return err
			}
			st.nodes[n.Node] = n
			return nil
		}); err != nil {
			return err
		}
		if err := b.Bucket(bucketServices).ForEach(func(k, v []byte) error {
			sv := new(Service)
			if err := decode(bucketServices, k, v, sv); err != nil {
				return err
			}
			st.services[serviceKey{sv.Node, sv.ID}] = sv
			st.indexService(sv)
			return nil
		}); err != nil {
			return err
		}
		now := s.opts.Clock.Now()
		if err := b.Bucket(bucketChecks).ForEach(func(k, v []byte) error {
			c := new(Check)
			if err := decode(bucketChecks, k, v, c); err != nil {
				return err
			}
			ck := checkKey{c.Node, c.CheckID}
			st.checks[ck] = c
			st.indexCheck(c)
			if c.Status == HealthCritical {
				// The time a check turned critical is not stored; count from the restart.
				st.criticalSince[ck] = now
			}
			return nil
		}); err != nil {
			return err
		}
		if err := b.Bucket(bucketKV).ForEach(func(k, v []byte) error {
			p := new(KVPair)
			if err := decode(bucketKV, k, v, p); err != nil {
				return err
			}
			st.kv[p.Key] = p
			st.kvKeys = append(st.kvKeys, p.Key) // bbolt iterates in byte order: sorted
			return nil
		}); err != nil {
			return err
		}
		if err := b.Bucket(bucketIntentions).ForEach(func(k, v []byte) error {
			x := new(authz.Intention)
			if err := decode(bucketIntentions, k, v, x); err != nil {
				return err
			}
			st.intentions[string(k)] = x
			st.indexIntention(string(k), x)
			return nil
		}); err != nil {
			return err
		}
		if cb := b.Bucket(bucketCA); cb.Get(caKeyState) != nil {
			rec := &caRecord{state: append([]byte(nil), cb.Get(caKeyState)...), roots: new(ca.RootList), config: new(CAConfig)}
			if err := decode(bucketCA, caKeyRoots, cb.Get(caKeyRoots), rec.roots); err != nil {
				return err
			}
			if err := decode(bucketCA, caKeyConfig, cb.Get(caKeyConfig), rec.config); err != nil {
				return err
			}
			st.ca = rec
		}
		return b.Bucket(bucketTopics).ForEach(func(k, v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("decode topics/%q: %d bytes, want 8", k, len(v))
			}
			t := string(k)
			st.topics[t] = binary.BigEndian.Uint64(v)
			if strings.HasPrefix(t, kvTopicPrefix) {
				st.kvTopicKeys = append(st.kvTopicKeys, t[len(kvTopicPrefix):])
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("state: load %q: %w", s.db.Path(), err)
	}
	slices.Sort(st.kvTopicKeys) // "kv:" prefix keeps byte order, but be explicit
	// Stores written before TopicNodeChecks existed raised TopicNode for check changes: a
	// node's missing checks topic starts from its node topic, so no index a client holds
	// goes back.
	for t, idx := range st.topics {
		name, ok := strings.CutPrefix(t, nodeTopicPrefix)
		if _, has := st.topics[TopicNodeChecks(name)]; ok && !has {
			st.topics[TopicNodeChecks(name)] = idx
		}
	}
	return st, nil
}

// ensureLocalNode registers the local node and its serfHealth check, or brings them in line
// with the options (address, datacenter); when the node was renamed, it moves the agent's
// services and checks from the old name to the new one.
func (s *Store) ensureLocalNode(ctx context.Context) error {
	return s.write(ctx, func(tx *Txn) error {
		name := s.opts.NodeName
		old := tx.getNode(name)
		prev := s.st.localNode
		id := ""
		if old != nil {
			id = old.ID
		} else if prev != "" && prev != name {
			if pn := tx.getNode(prev); pn != nil {
				id = pn.ID
			}
		}
		if id == "" {
			id = newUUID()
		}
		addr := s.opts.NodeAddress
		n := &Node{
			ID:         id,
			Node:       name,
			Address:    addr,
			Datacenter: s.opts.Datacenter,
			TaggedAddresses: map[string]string{
				"lan": addr, "lan_ipv4": addr, "wan": addr, "wan_ipv4": addr,
			},
			Meta: map[string]string{"consul-network-segment": ""},
		}
		if old != nil && old.Meta != nil {
			n.Meta = old.Meta
		}
		tx.putNode(n)
		if prev != "" && prev != name && tx.getNode(prev) != nil {
			for _, sv := range tx.servicesOfNode(prev) {
				if !sv.Agent {
					continue
				}
				moved := *sv
				moved.Node = name
				tx.putService(&moved)
			}
			for _, c := range tx.checksOfNode(prev) {
				if c.CheckID == SerfCheckID {
					continue
				}
				if c.ServiceID != "" && tx.getService(name, c.ServiceID) == nil {
					continue
				}
				moved := *c
				moved.Node = name
				tx.putCheck(&moved)
			}
			tx.deleteNode(prev)
		}
		serf := &Check{
			Node:    name,
			CheckID: SerfCheckID,
			Name:    "Serf Health Status",
			Status:  HealthPassing,
			Output:  "Agent alive and reachable",
		}
		tx.putCheck(serf)
		return nil
	})
}

// newUUID returns a random RFC 4122 version 4 UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

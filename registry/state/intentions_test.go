package state

import (
	"errors"
	"testing"
	"time"

	"github.com/podmesh/podmesh/tls/authz"
)

func ixn(src, dst string, action authz.Action) *authz.Intention {
	return &authz.Intention{SourceName: src, DestinationName: dst, Action: action}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestIntentionExactUpsert: defaults and precedence are applied, a repeated upsert raises
// nothing, and a change raises only the intention topics of the names involved.
func TestIntentionExactUpsert(t *testing.T) {
	s := openStore(t, t.TempDir())
	regWeb(t, s, "web1", "web")
	catalog := topicIndex(s, TopicHealthService("web"))
	if err := s.PutIntentionExact(ctx(t), ixn("web", "db", authz.Allow)); err != nil {
		t.Fatal(err)
	}
	var x *authz.Intention
	s.View(func(v *View) { x = v.IntentionExact("default", "web", "", "db") })
	if x == nil || x.SourceNS != "default" || x.DestinationNS != "default" || x.SourceType != authz.SourceConsul ||
		x.Precedence != 9 || x.ID != "" || !x.CreatedAt.IsZero() || x.Hash != nil || x.CreateIndex == 0 {
		t.Fatalf("stored %+v", x)
	}
	dbTopic, other := topicIndex(s, TopicIntentionsByDestination("db")), topicIndex(s, TopicIntentionsByDestination("cache"))
	before := globalIndex(s)
	if err := s.PutIntentionExact(ctx(t), ixn("web", "db", authz.Allow)); err != nil {
		t.Fatal(err)
	}
	if globalIndex(s) != before {
		t.Fatal("an unchanged upsert wrote")
	}
	if err := s.PutIntentionExact(ctx(t), ixn("web", "db", authz.Deny)); err != nil {
		t.Fatal(err)
	}
	s.View(func(v *View) {
		y := v.IntentionExact("default", "web", "default", "db")
		if y.Action != authz.Deny || y.CreateIndex != x.CreateIndex || y.ModifyIndex <= x.ModifyIndex {
			t.Fatalf("after change %+v (was %+v)", y, x)
		}
	})
	if topicIndex(s, TopicIntentionsByDestination("db")) <= dbTopic || topicIndex(s, TopicIntentionsBySource("web")) <= dbTopic {
		t.Fatal("db/web intention topics not raised")
	}
	if topicIndex(s, TopicIntentionsByDestination("cache")) != other || topicIndex(s, TopicHealthService("web")) != catalog {
		t.Fatal("an intention change raised unrelated topics")
	}
}

func TestIntentionLegacyAPI(t *testing.T) {
	dir := t.TempDir()
	clk := &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	s := openStore(t, dir, func(o *Options) { o.Clock = clk })
	id, err := s.CreateIntention(ctx(t), &authz.Intention{ID: "ignored", SourceName: "api", DestinationName: "cache", Action: authz.Deny, Meta: map[string]string{"a": "b"}})
	if err != nil || len(id) != 36 {
		t.Fatalf("create: %q %v", id, err)
	}
	var x *authz.Intention
	s.View(func(v *View) { x = v.IntentionByID(id) })
	if x == nil || !x.CreatedAt.Equal(clk.Now()) || !x.UpdatedAt.Equal(clk.Now()) || len(x.Hash) != 32 || x.Meta["a"] != "b" {
		t.Fatalf("created %+v", x)
	}
	// The same pair again, through either API, is a conflict or an update of that row.
	var ce *ConflictError
	if _, err := s.CreateIntention(ctx(t), ixn("api", "cache", authz.Allow)); !errors.As(err, &ce) {
		t.Fatalf("duplicate create: %v", err)
	}
	clk.Advance(time.Minute)
	if err := s.UpdateIntention(ctx(t), id, ixn("api2", "cache", authz.Allow)); err != nil {
		t.Fatal(err)
	}
	s.View(func(v *View) {
		y := v.IntentionByID(id)
		if y == nil || y.SourceName != "api2" || !y.CreatedAt.Equal(x.CreatedAt) || !y.UpdatedAt.Equal(clk.Now()) ||
			y.CreateIndex != x.CreateIndex || v.IntentionExact("", "api", "", "cache") != nil || v.IntentionCount() != 1 {
			t.Fatalf("after moving to api2: %+v", y)
		}
	})
	if err := s.PutIntentionExact(ctx(t), ixn("api2", "cache", authz.Deny)); err != nil {
		t.Fatal(err)
	}
	s.View(func(v *View) {
		if y := v.IntentionExact("", "api2", "", "cache"); y.ID != id || y.Action != authz.Deny {
			t.Fatalf("exact upsert over a legacy intention: %+v", y)
		}
	})
	if err := s.PutIntentionExact(ctx(t), ixn("web", "cache", authz.Allow)); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateIntention(ctx(t), id, ixn("web", "cache", authz.Allow)); !errors.As(err, &ce) {
		t.Fatalf("update onto another intention's pair: %v", err)
	}
	var nf *NotFoundError
	if err := s.UpdateIntention(ctx(t), "00000000-0000-0000-0000-000000000000", ixn("x", "y", authz.Allow)); !errors.As(err, &nf) {
		t.Fatalf("update of a missing ID: %v", err)
	}
	s.Close()

	s2 := openStore(t, dir, func(o *Options) { o.Clock = clk })
	s2.View(func(v *View) {
		if v.IntentionCount() != 2 || v.IntentionByID(id) == nil || v.IntentionByID(id).SourceName != "api2" {
			t.Fatalf("after reopen: %d intentions, %+v", v.IntentionCount(), v.IntentionByID(id))
		}
		all := v.Intentions()
		if len(v.IntentionsByDestination("cache")) != 2 || all[0].SourceName != "api2" || all[1].SourceName != "web" {
			t.Fatalf("indexes after reopen: %+v", all)
		}
	})
	if err := s2.DeleteIntention(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	if err := s2.DeleteIntention(ctx(t), id); !errors.As(err, &nf) {
		t.Fatalf("second delete: %v", err)
	}
	if err := s2.DeleteIntentionExact(ctx(t), "", "web", "", "cache"); err != nil {
		t.Fatal(err)
	}
	if err := s2.DeleteIntentionExact(ctx(t), "", "web", "", "cache"); err != nil {
		t.Fatalf("deleting a missing pair: %v", err)
	}
	s2.View(func(v *View) {
		if v.IntentionCount() != 0 || len(v.IntentionsByDestination("cache")) != 0 || len(v.IntentionsBySource("web")) != 0 {
			t.Fatal("intentions left after deletion")
		}
	})
}

func TestInvalidIntentionChangesNothing(t *testing.T) {
	s := openStore(t, t.TempDir())
	before := globalIndex(s)
	for _, tc := range []struct {
		x     *authz.Intention
		field string
	}{
		{ixn("web", "db", "maybe"), "Action"},
		{ixn("we*b", "db", authz.Allow), "SourceName"},
		{ixn("web", "", authz.Allow), "DestinationName"},
		{&authz.Intention{SourceName: "web", DestinationName: "db", Action: authz.Allow, SourceType: "foo"}, "SourceType"},
	} {
		err := s.PutIntentionExact(ctx(t), tc.x)
		var ie *InvalidError
		if !errors.As(err, &ie) || ie.Field != tc.field {
			t.Errorf("%+v: err %v, want InvalidError on %s", tc.x, err, tc.field)
		}
		if _, err := s.CreateIntention(ctx(t), tc.x); !errors.As(err, &ie) {
			t.Errorf("create %+v: err %v", tc.x, err)
		}
	}
	if globalIndex(s) != before {
		t.Fatal("rejected intentions changed the store")
	}
}

// TestWatchTopics: one channel for several topics, closed by a change to any of them and by
// nothing else; watchers of the same set share it; released watches are forgotten.
func TestWatchTopics(t *testing.T) {
	s := openStore(t, t.TempDir())
	base := s.Watchers()
	var ch1, ch2, ch3 <-chan struct{}
	var rel1, rel2, rel3 func()
	s.View(func(v *View) {
		ch1, rel1 = v.WatchTopics(TopicIntentionsByDestination("db"), TopicIntentionsByDestination("*"))
		ch2, rel2 = v.WatchTopics(TopicIntentionsByDestination("*"), TopicIntentionsByDestination("db"))
		ch3, rel3 = v.WatchTopics(TopicIntentionsByDestination("cache"), TopicIntentionsByDestination("*"))
	})
	defer rel1()
	defer rel2()
	defer rel3()
	if ch1 != ch2 || s.Watchers() != base+2 {
		t.Fatalf("same topic sets do not share a channel (%d watchers)", s.Watchers()-base)
	}
	if err := s.PutIntentionExact(ctx(t), ixn("web", "db", authz.Allow)); err != nil {
		t.Fatal(err)
	}
	if !isClosed(ch1) || isClosed(ch3) {
		t.Fatalf("after a db change: db watch closed %v, cache watch closed %v", isClosed(ch1), isClosed(ch3))
	}
	if err := s.PutIntentionExact(ctx(t), ixn("web", "*", authz.Deny)); err != nil {
		t.Fatal(err)
	}
	if !isClosed(ch3) {
		t.Fatal("a wildcard-destination change did not wake the cache watch")
	}
	if s.Watchers() != base {
		t.Fatalf("%d watches left after firing", s.Watchers()-base)
	}
	var ch4 <-chan struct{}
	var rel4 func()
	s.View(func(v *View) { ch4, rel4 = v.WatchTopics(TopicIntentions, TopicCARoots) })
	rel4()
	if s.Watchers() != base || isClosed(ch4) {
		t.Fatal("a released multi-watch lingers or fired")
	}
}

// Package state is the registry's catalog (nodes, services, checks), key/value store, mesh
// certificate authority and intentions: in memory for reads, durable in one bbolt file for
// restarts.
//
// # Model
//
// The local node (Options.NodeName) always exists with a permanent passing "serfHealth" check,
// like a Consul agent's own node. Agent registrations go to the local node and their checks
// are Managed: run by package registry/checks. External nodes, with their services and checks,
// come from /v1/catalog/register; their checks are only stored, as in Consul.
//
// # Indexes
//
// A global index counts writes. Every row carries CreateIndex and ModifyIndex. Queries do not
// report the global index but the modify index of the topic they read (see topics.go): the
// index of the last write that touched anything they read, deletions included. So a watcher of
// service A is not woken, and its X-Consul-Index does not move, when service B changes; and the
// index never goes backwards, even when the newest row of a result is deleted. Writes that change
// nothing (re-registering the same service) raise no index.
//
// # Durability
//
// A write returns only after the bbolt transaction holding it has committed, and bbolt fsyncs
// on commit. Concurrent writes are grouped into one transaction by a single committer
// goroutine (see Store), so one fsync serves many writers. Memory is updated only after the
// commit; a write that fails validation, or a group whose commit fails, leaves memory and disk
// unchanged. Open loads everything back, topic indexes included, so after a crash (kill -9)
// the state is exactly what was acknowledged and indexes keep rising from where they were.
//
// # Mesh CA and intentions
//
// The store owns the mesh CA (package tls/ca, see ca.go): IssueLeaf returns a leaf only after
// the CA's serial counter is committed, so serials are never reused after a crash; rotation,
// configuration changes and pruning are committed before the new trust bundle is visible, and
// undone in memory if the commit fails. Intentions (intentions.go) are stored one per
// source/destination pair with Consul's defaults, validation and precedence (package
// tls/authz). Their topics are separate from the catalog's: a change to the intentions of
// destination db raises the "intentions" topic and the by-destination topic of db (and the
// by-source topic of its source), nothing else, and TopicCARoots moves only when the trust
// bundle does.
//
// # Watching
//
// View.Watch returns a channel that is closed at the next change to a topic (close and
// replace: every change closes the current channel and the next watcher gets a new one). The
// publisher never blocks and never queues: a slow watcher re-reads the latest state when it
// gets round to it, skipping intermediate states (coalescing, as Consul's blocking queries).
// View.WatchTopics does the same for a set of topics (a match over several names), with one
// shared channel per set.
package state

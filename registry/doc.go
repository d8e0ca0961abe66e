// Package registry serves the part of Consul's HTTP API that real clients use
// (github.com/hashicorp/consul/api, Prometheus' consul_sd_configs, the consul CLI): agent,
// catalog, health and KV endpoints with Consul's JSON shapes, headers and blocking queries,
// and the Connect endpoints (the mesh CA's roots, leaves and configuration, intentions,
// authorize), over the durable store of package registry/state. registry/README.md lists the
// endpoints and where the registry differs from Consul.
//
// # Leaves
//
// The leaf of each service is kept in memory and shared by its callers, as Consul's agent
// cache does. A leaf query with ?index= blocks until the leaf is due: its renewal time (60–90%
// of its life, ca.RenewalTime) or a change of the active root, watched through the store's
// roots topic. Server.Run does the CA's periodic work: rotation by RotationPeriod, pruning,
// forgetting the leaves of services nobody asks for.
//
// # Blocking queries
//
// A read with ?index=N waits until its result's index exceeds N, or until ?wait (default 5m,
// at most 10m, plus a random jitter of up to wait/16) has passed, and then answers 200 with the
// current result either way. A read's index is the modify index of the store topic it reads
// (see registry/state), so a watcher of service A is not woken, and its index does not move,
// when service B changes. X-Consul-Index is never 0.
//
// # Slow consumers
//
// A waiting query holds only the channel of its topic. The store closes that channel on a
// change and never sends on it, so publishing never blocks, whatever the watchers do. A woken
// watcher re-runs its query against the latest state: changes that happened while it was slow
// (or while its client was between two long polls) are coalesced into the state it then reads,
// as with Consul's blocking queries; a client sees every final state, not every intermediate
// one. The alternative, a bounded queue per watcher, would only suit streaming clients, and the
// HTTP long-poll protocol has no way to deliver a queue anyway.
//
// # Fan-out cost
//
// When one change wakes many watchers of the same query, the first to re-run it renders the
// response and stores the bytes under (query, index) in a small cache; the others wait for
// that rendering and write the same bytes, so a thousand woken watchers cost one JSON encoding.
// Only blocking queries about to answer use the cache (plain reads render for themselves),
// and it is bounded in bytes (Config.RenderCacheBytes, least recently used out first).
//
// # Writes
//
// Every write is validated completely before it reaches the store, and the store applies it
// only after it is committed to disk, so a write answered with an error changes nothing.
// Successful writes answer exactly 200, as clients require.
package registry

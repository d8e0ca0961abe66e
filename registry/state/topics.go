package state

// Topics name the parts of the state a query can read. Every write raises the modify index of
// each topic whose readers could see a different result, to the write's index, and wakes the
// watchers of exactly those topics. A query's X-Consul-Index is its topic's modify index: the
// highest index of any change (deletions included) that touched what it reads. It never goes
// backwards because topic indexes are only ever raised, and they are stored with the rows.
//
// Reserved for the mesh CA and intentions (issue 4): topics "ca-roots" and "intentions", with
// buckets of the same names.
const (
	// TopicServices: the catalog service list (GET /v1/catalog/services). Raised by any change
	// to a service instance, and by node changes (node-meta and filter read node fields).
	TopicServices = "services"
	// TopicNodes: the node list (GET /v1/catalog/nodes).
	TopicNodes = "nodes"
	// TopicAgentChecks: the set and definitions of the checks the registry runs. Status changes
	// do not raise it. The check runner watches it.
	TopicAgentChecks = "agent-checks"
	// TopicCARoots and TopicIntentions are reserved for issue 4.
	TopicCARoots    = "ca-roots"
	TopicIntentions = "intentions"
)

// TopicHealthService is read by /v1/health/service/NAME and /v1/health/checks/NAME: the
// instances of the service, their checks, and their nodes' rows and node-level checks.
func TopicHealthService(name string) string { return "hsvc:" + name }

// TopicCatalogService is read by /v1/catalog/service/NAME: the instances of the service and
// their nodes' rows, but not checks, so a flapping check does not wake catalog watchers.
func TopicCatalogService(name string) string { return "csvc:" + name }

// TopicNode is read by /v1/catalog/node/NAME and /v1/health/node/NAME: the node's row, its
// services and its checks.
func TopicNode(name string) string { return "node:" + name }

// TopicChecks is read by /v1/health/state/STATE, where state is "any", "passing", "warning"
// or "critical". A status change raises the topics of both the old and the new state.
func TopicChecks(state string) string { return "checks:" + state }

// TopicKV is the topic of one key. Prefix reads take the highest index of the key topics under
// the prefix; see View.KVPrefixIndex.
func TopicKV(key string) string { return "kv:" + key }

const kvTopicPrefix = "kv:"

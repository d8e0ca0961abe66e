package state

// Topics name the parts of the state a query can read. Every write raises the modify index of
// each topic whose readers could see a different result, to the write's index, and wakes the
// watchers of exactly those topics. A query's X-Consul-Index is its topic's modify index: the
// highest index of any change (deletions included) that touched what it reads. It never goes
// backwards because topic indexes are only ever raised, and they are stored with the rows.
const (
	// TopicServices: the catalog service list (GET /v1/catalog/services). Raised by any change
	// to a service instance, and by node changes (node-meta and filter read node fields).
	TopicServices = "services"
	// TopicNodes: the node list (GET /v1/catalog/nodes).
	TopicNodes = "nodes"
	// TopicAgentChecks: the set and definitions of the checks the registry runs. Status changes
	// do not raise it. The check runner watches it.
	TopicAgentChecks = "agent-checks"
	// TopicCARoots: the mesh CA's trust bundle (GET /v1/connect/ca/roots): raised by a
	// rotation and when a pruned root leaves the list, not by issuing leaves.
	TopicCARoots = "ca-roots"
	// TopicCAConfig: the mesh CA's configuration (GET /v1/connect/ca/configuration).
	TopicCAConfig = "ca-config"
	// TopicIntentions: the whole intention list (GET /v1/connect/intentions). Raised by every
	// intention change; catalog, health and KV changes never raise it.
	TopicIntentions = "intentions"
)

// TopicIntentionsByDestination is raised by a change to any intention whose destination name
// is name ("*" for wildcard destinations). A match by destination for db reads the topics of
// "db" and "*", so a change to the intentions of another destination wakes none of its
// watchers.
func TopicIntentionsByDestination(name string) string { return "ixn-dst:" + name }

// TopicIntentionsBySource is TopicIntentionsByDestination for the source name.
func TopicIntentionsBySource(name string) string { return "ixn-src:" + name }

// TopicHealthService is read by /v1/health/service/NAME and /v1/health/checks/NAME: the
// instances of the service, their checks, and their nodes' rows and node-level checks.
func TopicHealthService(name string) string { return "hsvc:" + name }

// TopicCatalogService is read by /v1/catalog/service/NAME: the instances of the service and
// their nodes' rows, but not checks, so a flapping check does not wake catalog watchers.
func TopicCatalogService(name string) string { return "csvc:" + name }

// TopicNode is read by /v1/catalog/node/NAME (and the agent's ?hash service query): the
// node's row and its services, not their checks, so a flapping check does not wake catalog
// watchers of its node.
func TopicNode(name string) string { return "node:" + name }

// TopicNodeChecks is read by /v1/health/node/NAME: every check on the node, and the node's
// row (?node-meta reads it).
func TopicNodeChecks(name string) string { return nodeChecksTopicPrefix + name }

const (
	nodeTopicPrefix       = "node:"
	nodeChecksTopicPrefix = "node-checks:"
)

// TopicChecks is read by /v1/health/state/STATE, where state is "any", "passing", "warning"
// or "critical". A status change raises the topics of both the old and the new state.
func TopicChecks(state string) string { return "checks:" + state }

// TopicKV is the topic of one key. Prefix reads take the highest index of the key topics under
// the prefix; see View.KVPrefixIndex.
func TopicKV(key string) string { return "kv:" + key }

const kvTopicPrefix = "kv:"

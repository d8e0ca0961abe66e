package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/podmesh/podmesh/registry/state"
)

// RequestError is a request rejected before it reaches the store: it maps to a 4xx status and
// its message names the offending field.
type RequestError struct {
	Status int
	Field  string
	Msg    string
}

func (e *RequestError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

func badRequest(field, format string, args ...any) *RequestError {
	return &RequestError{Status: 400, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Limits on what a registration may carry, after Consul's own.
const (
	maxMetaPairs    = 64
	maxMetaKeyLen   = 128
	maxMetaValueLen = 512
	// MinCheckInterval is the shortest interval a check runs at; shorter ones are raised to it,
	// as Consul does.
	MinCheckInterval = time.Second
)

// opaqueMaps are fields whose object keys belong to the user (meta keys, header names, tagged
// address names), so snake_case normalisation must not touch them.
var opaqueMaps = map[string]bool{
	"meta": true, "nodemeta": true, "servicemeta": true, "header": true,
	"taggedaddresses": true, "servicetaggedaddresses": true,
}

// decodeJSON decodes a request body into out. Keys may be CamelCase or snake_case, as Consul
// accepts both: object keys are normalised (underscores dropped; encoding/json then matches
// names case-insensitively) except inside user-keyed maps. Unknown fields are ignored, as
// newer clients send fields this registry does not know. Errors name the field.
func decodeJSON(body []byte, out any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return badRequest("body", "request body is empty; expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var raw any
	if err := dec.Decode(&raw); err != nil {
		return badRequest("body", "malformed JSON: %v", err)
	}
	if dec.More() {
		return badRequest("body", "malformed JSON: data after the top-level value")
	}
	if _, ok := raw.(map[string]any); !ok {
		return badRequest("body", "expected a JSON object, got %s", jsonKind(raw))
	}
	normalized, err := normalizeKeys(raw, "")
	if err != nil {
		return err
	}
	norm, err := json.Marshal(normalized)
	if err != nil {
		return badRequest("body", "re-encode: %v", err)
	}
	if err := json.Unmarshal(norm, out); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field := te.Field
			if field == "" {
				field = "body"
			}
			return badRequest(field, "expected %s, got JSON %s", te.Type, te.Value)
		}
		return badRequest("body", "%v", err)
	}
	return nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	default:
		return "an object"
	}
}

func normKey(k string) string { return strings.ToLower(strings.ReplaceAll(k, "_", "")) }

// normalizeKeys normalises the object keys of v (see decodeJSON). Two keys of one object that
// normalise to the same field ({"Name": "web", "name": "other"}) are a 400 naming both: which
// one would win depends on map order. path names v's position, for the error.
func normalizeKeys(v any, path string) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		orig := make(map[string]string, len(t))
		for k, val := range t {
			nk := normKey(k)
			if prev, dup := orig[nk]; dup {
				return nil, duplicateKey(path, prev, k)
			}
			orig[nk] = k
			if opaqueMaps[nk] {
				out[nk] = val
				continue
			}
			nv, err := normalizeKeys(val, joinPath(path, k))
			if err != nil {
				return nil, err
			}
			out[nk] = nv
		}
		return out, nil
	case []any:
		for i := range t {
			nv, err := normalizeKeys(t[i], fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			t[i] = nv
		}
		return t, nil
	default:
		return v, nil
	}
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// duplicateKey is the 400 for two keys of one object that name the same field, a and b in
// a fixed order whatever the map order.
func duplicateKey(path, a, b string) error {
	if b < a {
		a, b = b, a
	}
	field := path
	if field == "" {
		field = "body"
	}
	return badRequest(field, "keys %q and %q name the same field; send one", a, b)
}

// durationField holds a duration as sent: a Go duration string ("10s") or a number of
// nanoseconds, as Consul accepts. Parsing happens in validation, where the field name is known.
type durationField struct {
	raw json.RawMessage
}

func (d *durationField) UnmarshalJSON(b []byte) error {
	d.raw = append(json.RawMessage(nil), b...)
	return nil
}

func (d durationField) set() bool {
	s := string(d.raw)
	return s != "" && s != "null" && s != `""`
}

// parse returns the duration (0 when unset) or an error naming field.
func (d durationField) parse(field string) (time.Duration, error) {
	if !d.set() {
		return 0, nil
	}
	var s string
	if err := json.Unmarshal(d.raw, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return 0, badRequest(field, "invalid duration %q (want e.g. \"10s\")", s)
		}
		if v < 0 {
			return 0, badRequest(field, "negative duration %q", s)
		}
		return v, nil
	}
	var f float64
	if err := json.Unmarshal(d.raw, &f); err == nil {
		if f < 0 || f > float64(1<<62) {
			return 0, badRequest(field, "duration %s out of range", d.raw)
		}
		return time.Duration(f), nil
	}
	return 0, badRequest(field, "invalid duration %s (want a string such as \"10s\")", d.raw)
}

// checkRequest is one check as sent in api.AgentServiceCheck, api.AgentCheckRegistration
// (which adds ID, Name, Notes, ServiceID), or as a catalog check's Definition.
type checkRequest struct {
	ID                string
	CheckID           string
	Name              string
	Notes             string
	ServiceID         string
	Status            string
	ScriptArgs        []string
	Args              []string
	DockerContainerID string
	Shell             string
	Interval          durationField
	Timeout           durationField
	TTL               durationField
	HTTP              string
	Header            map[string][]string
	Method            string
	Body              string
	TLSServerName     string
	TLSSkipVerify     bool
	TCP               string
	TCPUseTLS         bool
	UDP               string
	GRPC              string
	GRPCUseTLS        bool
	H2PING            string
	OSService         string
	AliasNode         string
	AliasService      string

	SuccessBeforePassing           int
	FailuresBeforeWarning          int
	FailuresBeforeCritical         int
	DeregisterCriticalServiceAfter durationField
}

// empty reports whether a check carries nothing at all; Consul drops such checks (clients
// send "Check": {} when they mean none).
func (c *checkRequest) empty() bool {
	return c.ID == "" && c.CheckID == "" && c.Name == "" && c.Notes == "" && c.ServiceID == "" &&
		c.Status == "" && len(c.ScriptArgs) == 0 && len(c.Args) == 0 && c.DockerContainerID == "" &&
		!c.Interval.set() && !c.Timeout.set() && !c.TTL.set() && c.HTTP == "" && c.TCP == "" &&
		c.UDP == "" && c.GRPC == "" && c.H2PING == "" && c.OSService == "" && c.AliasNode == "" &&
		c.AliasService == "" && !c.DeregisterCriticalServiceAfter.set()
}

// checkKind returns the single kind of check c is: "ttl", "http" or "tcp". Every other kind
// Consul knows (script, docker, gRPC, UDP, H2PING, OS service, alias) is rejected: the registry
// does not run them, and accepting a check it never runs would leave it critical forever.
func (c *checkRequest) checkKind(field string) (string, error) {
	var kinds []string
	if c.TTL.set() {
		kinds = append(kinds, "TTL")
	}
	if c.HTTP != "" {
		kinds = append(kinds, "HTTP")
	}
	if c.TCP != "" {
		kinds = append(kinds, "TCP")
	}
	unsupported := []struct {
		set  bool
		name string
	}{
		{len(c.ScriptArgs) > 0 || len(c.Args) > 0, "ScriptArgs"},
		{c.DockerContainerID != "", "DockerContainerID"},
		{c.GRPC != "", "GRPC"},
		{c.UDP != "", "UDP"},
		{c.H2PING != "", "H2PING"},
		{c.OSService != "", "OSService"},
		{c.AliasNode != "" || c.AliasService != "", "AliasNode/AliasService"},
	}
	for _, u := range unsupported {
		if u.set {
			return "", badRequest(field+"."+u.name, "unsupported check kind; the registry runs TTL, HTTP and TCP checks")
		}
	}
	switch len(kinds) {
	case 0:
		return "", badRequest(field, "no check kind: set one of TTL, HTTP or TCP")
	case 1:
		return strings.ToLower(kinds[0]), nil
	default:
		return "", badRequest(field, "conflicting check kinds %s: set exactly one", strings.Join(kinds, " and "))
	}
}

// toAgentCheck validates an agent check and turns it into a stored, managed check. ID and
// Name defaults are the caller's.
func (c *checkRequest) toAgentCheck(field string) (*state.Check, error) {
	kind, err := c.checkKind(field)
	if err != nil {
		return nil, err
	}
	var def state.CheckDefinition
	if def.Interval, err = c.Interval.parse(field + ".Interval"); err != nil {
		return nil, err
	}
	if def.Timeout, err = c.Timeout.parse(field + ".Timeout"); err != nil {
		return nil, err
	}
	if def.TTL, err = c.TTL.parse(field + ".TTL"); err != nil {
		return nil, err
	}
	if def.DeregisterCriticalServiceAfter, err = c.DeregisterCriticalServiceAfter.parse(field + ".DeregisterCriticalServiceAfter"); err != nil {
		return nil, err
	}
	switch kind {
	case state.CheckTypeTTL:
		if def.TTL <= 0 {
			return nil, badRequest(field+".TTL", "must be > 0 for a TTL check")
		}
		if def.Interval > 0 {
			return nil, badRequest(field+".Interval", "Interval and TTL cannot both be specified")
		}
	case state.CheckTypeHTTP:
		u, perr := url.Parse(c.HTTP)
		if perr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, badRequest(field+".HTTP", "invalid URL %q: want http:// or https:// with a host", c.HTTP)
		}
		if c.Method != "" && !validMethod(c.Method) {
			return nil, badRequest(field+".Method", "invalid HTTP method %q", c.Method)
		}
		def.HTTP, def.Header, def.Method, def.Body = c.HTTP, c.Header, c.Method, c.Body
		def.TLSServerName, def.TLSSkipVerify = c.TLSServerName, c.TLSSkipVerify
	case state.CheckTypeTCP:
		if _, port, serr := net.SplitHostPort(c.TCP); serr != nil || port == "" {
			return nil, badRequest(field+".TCP", "invalid address %q: want host:port", c.TCP)
		}
		if c.TCPUseTLS {
			return nil, badRequest(field+".TCPUseTLS", "TCP checks over TLS are not supported")
		}
		def.TCP = c.TCP
	}
	if kind != state.CheckTypeTTL && def.Interval <= 0 {
		return nil, badRequest(field+".Interval", "must be > 0 for HTTP and TCP checks")
	}
	if c.Status != "" && !state.ValidStatus(c.Status) {
		return nil, badRequest(field+".Status", "%q is not one of passing, warning, critical", c.Status)
	}
	for _, t := range []struct {
		name string
		v    int
	}{{"SuccessBeforePassing", c.SuccessBeforePassing}, {"FailuresBeforeWarning", c.FailuresBeforeWarning}, {"FailuresBeforeCritical", c.FailuresBeforeCritical}} {
		if t.v < 0 {
			return nil, badRequest(field+"."+t.name, "must not be negative, got %d", t.v)
		}
	}
	if c.FailuresBeforeWarning > c.FailuresBeforeCritical && c.FailuresBeforeCritical > 0 {
		return nil, badRequest(field+".FailuresBeforeWarning", "%d is higher than FailuresBeforeCritical %d", c.FailuresBeforeWarning, c.FailuresBeforeCritical)
	}
	def.SuccessBeforePassing = c.SuccessBeforePassing
	def.FailuresBeforeWarning = c.FailuresBeforeWarning
	def.FailuresBeforeCritical = c.FailuresBeforeCritical
	return &state.Check{
		CheckID: c.CheckID, Name: c.Name, Status: c.Status, Notes: c.Notes, Type: kind,
		Definition: def, Managed: true,
	}, nil
}

// validName is state.ValidateName as a *RequestError.
func validName(field, v string) error {
	var ie *state.InvalidError
	if err := state.ValidateName(field, v); errors.As(err, &ie) {
		return badRequest(ie.Field, "%s", ie.Msg)
	}
	return nil
}

func validMethod(m string) bool {
	if len(m) > 32 {
		return false
	}
	for _, r := range m {
		if r < 'A' || r > 'Z' {
			return false
		}
	}
	return true
}

// serviceRegistration is api.AgentServiceRegistration.
type serviceRegistration struct {
	Kind              string
	ID                string
	Name              string
	Tags              []string
	Port              int
	Address           string
	SocketPath        string
	TaggedAddresses   map[string]ServiceAddress
	EnableTagOverride bool
	Meta              map[string]string
	Weights           *Weights
	Check             *checkRequest
	Checks            []*checkRequest
}

var serviceKinds = map[string]bool{
	"": true, "connect-proxy": true, "mesh-gateway": true, "terminating-gateway": true,
	"ingress-gateway": true, "api-gateway": true,
}

func validateMeta(field string, m map[string]string) error {
	if len(m) > maxMetaPairs {
		return badRequest(field, "%d pairs, at most %d allowed", len(m), maxMetaPairs)
	}
	for k, v := range m {
		switch {
		case k == "":
			return badRequest(field, "empty key")
		case len(k) > maxMetaKeyLen:
			return badRequest(field, "key %.20q... longer than %d bytes", k, maxMetaKeyLen)
		case len(v) > maxMetaValueLen:
			return badRequest(field+"."+k, "value longer than %d bytes", maxMetaValueLen)
		}
	}
	return nil
}

func validatePort(field string, p int) error {
	if p < 0 || p > 65535 {
		return badRequest(field, "port %d out of range 0-65535", p)
	}
	return nil
}

func toStateTagged(field string, m map[string]ServiceAddress) (map[string]state.ServiceAddress, error) {
	if len(m) == 0 {
		return nil, nil
	}
	out := make(map[string]state.ServiceAddress, len(m))
	for k, v := range m {
		if err := validatePort(field+"."+k+".Port", v.Port); err != nil {
			return nil, err
		}
		out[k] = state.ServiceAddress(v)
	}
	return out, nil
}

// decodeServiceRegistration decodes and validates PUT /v1/agent/service/register, applying
// Consul's defaults: ID = Name, weights 1/1, check IDs "service:<id>" (":<n>" with several),
// check names "Service '<name>' check".
func decodeServiceRegistration(body []byte) (*state.Service, []*state.Check, error) {
	var r serviceRegistration
	if err := decodeJSON(body, &r); err != nil {
		return nil, nil, err
	}
	if strings.TrimSpace(r.Name) == "" {
		return nil, nil, badRequest("Name", "missing service name")
	}
	if r.ID == "" {
		r.ID = r.Name
	}
	if strings.Contains(r.ID, "/") {
		return nil, nil, badRequest("ID", "service ID %q must not contain '/'", r.ID)
	}
	if !serviceKinds[r.Kind] {
		return nil, nil, badRequest("Kind", "unknown service kind %q", r.Kind)
	}
	if err := validatePort("Port", r.Port); err != nil {
		return nil, nil, err
	}
	if err := validateMeta("Meta", r.Meta); err != nil {
		return nil, nil, err
	}
	w := state.Weights{Passing: 1, Warning: 1}
	if r.Weights != nil {
		if r.Weights.Passing < 1 {
			return nil, nil, badRequest("Weights.Passing", "must be greater than 0, got %d", r.Weights.Passing)
		}
		if r.Weights.Warning < 0 {
			return nil, nil, badRequest("Weights.Warning", "must not be negative, got %d", r.Weights.Warning)
		}
		w = state.Weights(*r.Weights)
	}
	tagged, err := toStateTagged("TaggedAddresses", r.TaggedAddresses)
	if err != nil {
		return nil, nil, err
	}
	svc := &state.Service{
		Kind: r.Kind, ID: r.ID, Service: r.Name, Tags: r.Tags, Address: r.Address,
		TaggedAddresses: tagged, Meta: r.Meta, Port: r.Port, SocketPath: r.SocketPath,
		Weights: w, EnableTagOverride: r.EnableTagOverride,
	}
	type indexed struct {
		field string
		c     *checkRequest
	}
	var reqs []indexed
	if r.Check != nil && !r.Check.empty() {
		reqs = append(reqs, indexed{"Check", r.Check})
	}
	for i, c := range r.Checks {
		if c != nil && !c.empty() {
			reqs = append(reqs, indexed{fmt.Sprintf("Checks[%d]", i), c})
		}
	}
	checks := make([]*state.Check, 0, len(reqs))
	seen := make(map[string]bool, len(reqs))
	for i, ic := range reqs {
		c, err := ic.c.toAgentCheck(ic.field)
		if err != nil {
			return nil, nil, err
		}
		if c.CheckID == "" {
			c.CheckID = ic.c.ID
		}
		if c.CheckID == "" {
			c.CheckID = "service:" + r.ID
			if len(reqs) > 1 {
				c.CheckID = fmt.Sprintf("service:%s:%d", r.ID, i+1)
			}
		}
		if c.Name == "" {
			c.Name = fmt.Sprintf("Service '%s' check", r.Name)
		}
		// The store checks these too, but counts only the checks that reach it (an empty
		// "Check" or "Checks" entry is dropped): name the field as the request did.
		if state.ReservedCheckID(c.CheckID) {
			return nil, nil, badRequest(ic.field+".CheckID", "%q is reserved", c.CheckID)
		}
		if seen[c.CheckID] {
			return nil, nil, badRequest(ic.field+".CheckID", "duplicate check ID %q", c.CheckID)
		}
		seen[c.CheckID] = true
		if err := validName(ic.field+".CheckID", c.CheckID); err != nil {
			return nil, nil, err
		}
		if err := validName(ic.field+".Name", c.Name); err != nil {
			return nil, nil, err
		}
		if ic.c.ServiceID != "" && ic.c.ServiceID != r.ID {
			return nil, nil, badRequest(ic.field+".ServiceID", "%q differs from the service being registered %q", ic.c.ServiceID, r.ID)
		}
		checks = append(checks, c)
	}
	return svc, checks, nil
}

// decodeCheckRegistration decodes and validates PUT /v1/agent/check/register
// (api.AgentCheckRegistration). ID defaults to Name.
func decodeCheckRegistration(body []byte) (*state.Check, error) {
	var r checkRequest
	if err := decodeJSON(body, &r); err != nil {
		return nil, err
	}
	if strings.TrimSpace(r.Name) == "" {
		return nil, badRequest("Name", "missing check name")
	}
	c, err := r.toAgentCheck("check")
	if err != nil {
		return nil, err
	}
	c.CheckID = r.ID
	if c.CheckID == "" {
		c.CheckID = r.CheckID
	}
	if c.CheckID == "" {
		c.CheckID = r.Name
	}
	c.ServiceID = r.ServiceID
	return c, nil
}

// catalogCheck is a check in a catalog registration (api.AgentCheck / api.HealthCheck).
type catalogCheck struct {
	Node       string
	CheckID    string
	Name       string
	Status     string
	Notes      string
	Output     string
	ServiceID  string
	Definition struct {
		HTTP                           string
		Header                         map[string][]string
		Method                         string
		Body                           string
		TLSServerName                  string
		TLSSkipVerify                  bool
		TCP                            string
		Interval                       durationField
		Timeout                        durationField
		DeregisterCriticalServiceAfter durationField
	}
}

type catalogService struct {
	Kind              string
	ID                string
	Service           string
	Tags              []string
	Meta              map[string]string
	Port              int
	Address           string
	SocketPath        string
	TaggedAddresses   map[string]ServiceAddress
	Weights           *Weights
	EnableTagOverride bool
}

type catalogRegister struct {
	ID              string
	Node            string
	Address         string
	Datacenter      string
	TaggedAddresses map[string]string
	NodeMeta        map[string]string
	Service         *catalogService
	Check           *catalogCheck
	Checks          []*catalogCheck
	SkipNodeUpdate  bool
}

// decodeCatalogRegister decodes and validates PUT /v1/catalog/register
// (api.CatalogRegistration). The Go client sends zero values (empty ID and Datacenter, zero
// weights), which mean "default".
func decodeCatalogRegister(body []byte) (reg *state.CatalogRegistration, dc string, err error) {
	var r catalogRegister
	if err := decodeJSON(body, &r); err != nil {
		return nil, "", err
	}
	if strings.TrimSpace(r.Node) == "" {
		return nil, "", badRequest("Node", "missing node name")
	}
	if strings.TrimSpace(r.Address) == "" {
		return nil, "", badRequest("Address", "missing node address")
	}
	if err := validateMeta("NodeMeta", r.NodeMeta); err != nil {
		return nil, "", err
	}
	reg = &state.CatalogRegistration{
		Node: state.Node{ID: r.ID, Node: r.Node, Address: r.Address, TaggedAddresses: r.TaggedAddresses,
			Meta: r.NodeMeta},
		SkipNodeUpdate: r.SkipNodeUpdate,
	}
	if s := r.Service; s != nil {
		if strings.TrimSpace(s.Service) == "" {
			return nil, "", badRequest("Service.Service", "missing service name")
		}
		if s.ID == "" {
			s.ID = s.Service
		}
		if !serviceKinds[s.Kind] {
			return nil, "", badRequest("Service.Kind", "unknown service kind %q", s.Kind)
		}
		if err := validatePort("Service.Port", s.Port); err != nil {
			return nil, "", err
		}
		if err := validateMeta("Service.Meta", s.Meta); err != nil {
			return nil, "", err
		}
		w := state.Weights{Passing: 1, Warning: 1}
		if s.Weights != nil && (s.Weights.Passing != 0 || s.Weights.Warning != 0) {
			if s.Weights.Passing < 1 || s.Weights.Warning < 0 {
				return nil, "", badRequest("Service.Weights", "invalid weights %+v", *s.Weights)
			}
			w = state.Weights(*s.Weights)
		}
		tagged, err := toStateTagged("Service.TaggedAddresses", s.TaggedAddresses)
		if err != nil {
			return nil, "", err
		}
		reg.Service = &state.Service{Kind: s.Kind, ID: s.ID, Service: s.Service, Tags: s.Tags,
			Meta: s.Meta, Port: s.Port, Address: s.Address, SocketPath: s.SocketPath,
			TaggedAddresses: tagged, Weights: w, EnableTagOverride: s.EnableTagOverride}
	}
	type indexed struct {
		field string
		c     *catalogCheck
	}
	var cs []indexed
	if r.Check != nil {
		cs = append(cs, indexed{"Check", r.Check})
	}
	for i, c := range r.Checks {
		if c != nil {
			cs = append(cs, indexed{fmt.Sprintf("Checks[%d]", i), c})
		}
	}
	for _, ic := range cs {
		c := ic.c
		if c.CheckID == "" {
			c.CheckID = c.Name
		}
		if strings.TrimSpace(c.CheckID) == "" {
			return nil, "", badRequest(ic.field+".CheckID", "missing check ID (and no Name to default it from)")
		}
		if c.Name == "" {
			c.Name = c.CheckID
		}
		if c.Status != "" && !state.ValidStatus(c.Status) {
			return nil, "", badRequest(ic.field+".Status", "%q is not one of passing, warning, critical", c.Status)
		}
		var def state.CheckDefinition
		var err error
		if def.Interval, err = c.Definition.Interval.parse(ic.field + ".Definition.Interval"); err != nil {
			return nil, "", err
		}
		if def.Timeout, err = c.Definition.Timeout.parse(ic.field + ".Definition.Timeout"); err != nil {
			return nil, "", err
		}
		if def.DeregisterCriticalServiceAfter, err = c.Definition.DeregisterCriticalServiceAfter.parse(ic.field + ".Definition.DeregisterCriticalServiceAfter"); err != nil {
			return nil, "", err
		}
		def.HTTP, def.Header, def.Method, def.Body = c.Definition.HTTP, c.Definition.Header, c.Definition.Method, c.Definition.Body
		def.TLSServerName, def.TLSSkipVerify, def.TCP = c.Definition.TLSServerName, c.Definition.TLSSkipVerify, c.Definition.TCP
		reg.Checks = append(reg.Checks, &state.Check{Node: c.Node, CheckID: c.CheckID, Name: c.Name,
			Status: c.Status, Notes: c.Notes, Output: c.Output, ServiceID: c.ServiceID, Definition: def})
		reg.CheckFields = append(reg.CheckFields, ic.field)
	}
	return reg, r.Datacenter, nil
}

type catalogDeregister struct {
	Node       string
	Datacenter string
	ServiceID  string
	CheckID    string
}

// decodeCatalogDeregister decodes PUT /v1/catalog/deregister.
func decodeCatalogDeregister(body []byte) (*catalogDeregister, error) {
	var r catalogDeregister
	if err := decodeJSON(body, &r); err != nil {
		return nil, err
	}
	if strings.TrimSpace(r.Node) == "" {
		return nil, badRequest("Node", "missing node name")
	}
	return &r, nil
}

// kvPutParams are the query parameters of PUT /v1/kv/KEY.
type kvPutParams struct {
	Flags uint64
	CAS   *uint64
}

func parseUintParam(q url.Values, name string) (*uint64, error) {
	if _, ok := q[name]; !ok {
		return nil, nil
	}
	v, err := strconv.ParseUint(q.Get(name), 10, 64)
	if err != nil {
		return nil, badRequest(name, "invalid %s %q: want an unsigned integer", name, q.Get(name))
	}
	return &v, nil
}

func parseKVPutParams(q url.Values) (*kvPutParams, error) {
	var p kvPutParams
	if f, err := parseUintParam(q, "flags"); err != nil {
		return nil, err
	} else if f != nil {
		p.Flags = *f
	}
	cas, err := parseUintParam(q, "cas")
	if err != nil {
		return nil, err
	}
	p.CAS = cas
	for _, s := range []string{"acquire", "release"} {
		if _, ok := q[s]; ok {
			return nil, badRequest(s, "sessions are not supported by this registry")
		}
	}
	return &p, nil
}

// kvGetParams are the query parameters of GET /v1/kv/KEY.
type kvGetParams struct {
	Recurse   bool
	Keys      bool
	Raw       bool
	Separator string
}

func parseKVGetParams(q url.Values) (*kvGetParams, error) {
	p := kvGetParams{Separator: q.Get("separator")}
	var err error
	if p.Recurse, err = boolParam(q, "recurse"); err != nil {
		return nil, err
	}
	if p.Keys, err = boolParam(q, "keys"); err != nil {
		return nil, err
	}
	if p.Raw, err = boolParam(q, "raw"); err != nil {
		return nil, err
	}
	if p.Separator != "" && !p.Keys {
		return nil, badRequest("separator", "only valid with ?keys")
	}
	if p.Raw && (p.Recurse || p.Keys) {
		return nil, badRequest("raw", "cannot be combined with recurse or keys")
	}
	return &p, nil
}

// boolParam reads a flag parameter the way Consul does: present and empty means true,
// otherwise strconv.ParseBool.
func boolParam(q url.Values, name string) (bool, error) {
	v, ok := q[name]
	if !ok {
		return false, nil
	}
	if len(v) == 0 || v[0] == "" {
		return true, nil
	}
	b, err := strconv.ParseBool(v[0])
	if err != nil {
		return false, badRequest(name, "invalid value %q: want true or false", v[0])
	}
	return b, nil
}

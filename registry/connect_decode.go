package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/podmesh/podmesh/registry/state"
	"github.com/podmesh/podmesh/tls/authz"
	"github.com/podmesh/podmesh/tls/ca"
	"github.com/podmesh/podmesh/tls/spiffe"
)

// Decoders of the Connect endpoints' request bodies. Each validates completely and returns a
// *RequestError (400) naming the field, so a bad request never reaches the store.

// decodeIntention reads an intention body (PUT exact, POST, PUT by ID). Keys may be CamelCase
// or snake_case. The store ignores the ID, timestamps, precedence, hash and indexes a client
// sends (consul/api sends zero values for them).
func decodeIntention(body []byte) (*authz.Intention, error) {
	x := new(authz.Intention)
	if err := decodeJSON(body, x); err != nil {
		return nil, err
	}
	return x, nil
}

// checkIntention applies the defaults and validates, as the authz contract requires before
// storing: a 400 listing every failed check, each naming its field and value. Only the
// default namespace and partition exist here (Consul's open-source edition).
func checkIntention(x *authz.Intention) error {
	x.SetDefaults()
	var msgs []string
	for _, f := range []struct{ field, v string }{{"SourceNS", x.SourceNS}, {"DestinationNS", x.DestinationNS}} {
		if f.v != authz.DefaultNamespace {
			msgs = append(msgs, fmt.Sprintf("%s %q: namespaces are a Consul Enterprise feature; only %q is supported", f.field, f.v, authz.DefaultNamespace))
		}
	}
	if err := x.Validate(); err != nil {
		for _, e := range unjoin(err) {
			msgs = append(msgs, strings.TrimPrefix(e.Error(), "authz: intention: "))
		}
	}
	if len(msgs) > 0 {
		return &RequestError{Status: 400, Msg: strings.Join(msgs, "; ")}
	}
	return nil
}

// unjoin returns the errors of an errors.Join, or err alone.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// parseServiceParam reads a source or destination query parameter ("name" or
// "default/name"): the name, which must be set and in the default namespace and partition.
func parseServiceParam(param, v string) (string, error) {
	if v == "" {
		return "", badRequest(param, "required query parameter '%s' not set", param)
	}
	partition, ns, name, err := authz.ParseServiceName(v)
	if err != nil {
		return "", badRequest(param, "%v", err)
	}
	if partition != "" {
		return "", badRequest(param, "%q: admin partitions are a Consul Enterprise feature; only the default partition is supported", v)
	}
	if ns != authz.DefaultNamespace {
		return "", badRequest(param, "%q: namespace %q: namespaces are a Consul Enterprise feature; only %q is supported", v, ns, authz.DefaultNamespace)
	}
	return name, nil
}

// caConfigKeys are the top-level keys of PUT /v1/connect/ca/configuration, normalised
// (lower case, no underscores).
const (
	keyProvider = "provider"
	keyConfig   = "config"
	keyForce    = "forcewithoutcrosssigning"
)

// decodeCAConfig reads PUT /v1/connect/ca/configuration. As in Consul the configuration is
// replaced, not merged: keys left out take their defaults (LeafCertTTL the registry's
// initial one, leafTTL). PrivateKey (an ECDSA P-256 key) is accepted and makes the root;
// RootCert, other providers and other key types are refused, naming the key.
func decodeCAConfig(body []byte, leafTTL time.Duration) (*state.CAConfigUpdate, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, badRequest("body", "request body is empty; expected a JSON object")
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, badRequest("body", "malformed JSON: %v", err)
	}
	if top == nil {
		return nil, badRequest("body", "expected a JSON object, got null")
	}
	fields := map[string]json.RawMessage{}
	orig := map[string]string{}
	for k, v := range top {
		nk := normKey(k)
		if prev, dup := orig[nk]; dup {
			return nil, duplicateKey("", prev, k)
		}
		orig[nk], fields[nk] = k, v
	}
	var provider string
	if raw, ok := fields[keyProvider]; ok {
		if err := json.Unmarshal(raw, &provider); err != nil {
			return nil, badRequest("Provider", "expected a string, got %s", raw)
		}
	}
	if provider != state.ProviderConsul {
		return nil, badRequest("Provider", "%q: only the built-in %q provider is supported", provider, state.ProviderConsul)
	}
	u := &state.CAConfigUpdate{}
	if raw, ok := fields[keyForce]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &u.ForceWithoutCrossSigning); err != nil {
			return nil, badRequest("ForceWithoutCrossSigning", "expected a boolean, got %s", raw)
		}
	}
	var cfg map[string]any
	if raw, ok := fields[keyConfig]; ok {
		if err := json.Unmarshal(raw, &cfg); err != nil {
			return nil, badRequest("Config", "expected an object, got %s", raw)
		}
	}
	seen := map[string]string{}
	for k := range cfg {
		nk := normKey(k)
		if prev, dup := seen[nk]; dup {
			return nil, duplicateKey("Config", prev, k)
		}
		seen[nk] = k
	}
	rest := make(map[string]any, len(cfg))
	for k, v := range cfg {
		switch normKey(k) {
		case "privatekey":
			s, ok := v.(string)
			if !ok {
				return nil, badRequest("Config."+k, "expected a PEM string, got %s", jsonKind(v))
			}
			if s == "" {
				continue
			}
			key, err := state.ParseCAPrivateKey(s)
			if err != nil {
				return nil, badRequest("Config."+k, "%v", err)
			}
			u.PrivateKey, u.Key = s, key
		case "rootcert":
			if s, ok := v.(string); ok && s == "" {
				continue
			}
			return nil, badRequest("Config."+k, "bringing your own root certificate is not supported; set PrivateKey alone and the registry makes the root from it")
		default:
			rest[k] = v
		}
	}
	parsed, err := ca.ParseProviderConfig(rest, ca.Config{LeafCertTTL: leafTTL})
	if err != nil {
		var msgs []string
		for _, e := range unjoin(err) {
			msgs = append(msgs, strings.TrimPrefix(e.Error(), "ca: config: "))
		}
		return nil, &RequestError{Status: 400, Field: "Config", Msg: strings.Join(msgs, "; ")}
	}
	if parsed.RotationPeriod != 0 && parsed.RotationPeriod < time.Second {
		return nil, badRequest("Config.RotationPeriod", "%v: must be at least 1s", parsed.RotationPeriod)
	}
	// Every rotation replaces every leaf and keeps the old root for 2 × LeafCertTTL: rotating
	// more often than leaves live would only churn leaves and pile up roots.
	if period, ttl := cmpOr(parsed.RotationPeriod, ca.DefaultRotationPeriod), cmpOr(parsed.LeafCertTTL, ca.DefaultLeafCertTTL); period < ttl {
		return nil, badRequest("Config.RotationPeriod", "%v: must be at least LeafCertTTL %v", period, ttl)
	}
	if parsed.IntermediateCertTTL < 0 {
		return nil, badRequest("Config.IntermediateCertTTL", "%v: must not be negative", parsed.IntermediateCertTTL)
	}
	u.Config = parsed
	return u, nil
}

func cmpOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// authorizeRequest is POST /v1/agent/connect/authorize.
type authorizeRequest struct {
	Target           string
	ClientCertURI    string
	ClientCertSerial string
	Namespace        string
}

// decodeAuthorize reads and checks an authorize request, with Consul's messages (reference
// §1.9): 400 "Request decode failed: ...", "Target service must be specified", "ClientCertURI
// not a valid Connect identifier", "ClientCertURI not a valid Service identifier".
func decodeAuthorize(body []byte) (*authorizeRequest, spiffe.ServiceID, error) {
	var req authorizeRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, spiffe.ServiceID{}, &RequestError{Status: 400, Msg: "Request decode failed: " + err.Error()}
	}
	if req.Target == "" {
		return nil, spiffe.ServiceID{}, &RequestError{Status: 400, Msg: "Target service must be specified"}
	}
	if req.Namespace != "" && req.Namespace != authz.DefaultNamespace {
		return nil, spiffe.ServiceID{}, badRequest("Namespace", "%q: namespaces are a Consul Enterprise feature; only %q is supported", req.Namespace, authz.DefaultNamespace)
	}
	id, err := spiffe.Parse(req.ClientCertURI)
	if err != nil {
		if connectIdentifier(req.ClientCertURI) {
			return nil, spiffe.ServiceID{}, &RequestError{Status: 400, Msg: "ClientCertURI not a valid Service identifier"}
		}
		return nil, spiffe.ServiceID{}, &RequestError{Status: 400, Msg: "ClientCertURI not a valid Connect identifier"}
	}
	return &req, id, nil
}

// connectIdentifier reports whether s is one of Consul's non-service SPIFFE IDs: a signing
// ID (spiffe://<td>), an agent, server or mesh gateway ID.
func connectIdentifier(s string) bool {
	if _, err := spiffe.ParseSigning(s); err == nil {
		return true
	}
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return false
	}
	_, path, ok := strings.Cut(rest, "/")
	if !ok {
		return false
	}
	parts := strings.Split(path, "/")
	if len(parts) >= 2 && parts[0] == "ap" {
		parts = parts[2:]
	}
	switch {
	case len(parts) == 6 && parts[0] == "agent" && parts[1] == "client" && parts[2] == "dc" && parts[4] == "id":
	case len(parts) == 4 && parts[0] == "agent" && parts[1] == "server" && parts[2] == "dc":
	case len(parts) == 4 && parts[0] == "gateway" && parts[1] == "mesh" && parts[2] == "dc":
	default:
		return false
	}
	for _, p := range parts {
		if p == "" {
			return false
		}
	}
	return true
}

// errNotUUID is the message for an intention ID that is not a UUID.
var errNotUUID = errors.New("is not a UUID (36 characters, 8-4-4-4-12 hex digits)")

// checkUUID validates an intention ID from the path.
func checkUUID(id string) error {
	if len(id) != 36 {
		return badRequest("id", "%q %v", id, errNotUUID)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return badRequest("id", "%q %v", id, errNotUUID)
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return badRequest("id", "%q %v", id, errNotUUID)
			}
		}
	}
	return nil
}

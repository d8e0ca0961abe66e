package proxy

import (
	"net/http"
	"net/textproto"
	"strings"
)

// Hop-by-hop headers (RFC 7230 §6.1 and RFC 2616 §13.5.1) never cross the proxy; neither
// do the headers a Connection header names. Te survives as "Te: trailers" when the client
// asked for trailers, which gRPC needs. The list is net/http/httputil's.
var hopHeaders = [...]string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// teTrailers is shared by every forwarded request that asked for trailers; nobody mutates
// it, so it costs no allocation.
var teTrailers = []string{"trailers"}

// removeHopByHop deletes hop-by-hop headers from h in place. With keepTE it keeps
// "Te: trailers" if the client sent that token.
func removeHopByHop(h http.Header, keepTE bool) {
	if c := h["Connection"]; len(c) > 0 {
		for _, f := range c {
			for sf := range strings.SplitSeq(f, ",") {
				if sf = textproto.TrimString(sf); sf != "" {
					h.Del(sf)
				}
			}
		}
	}
	trailers := keepTE && containsToken(h["Te"], "trailers")
	for _, k := range hopHeaders {
		delete(h, k)
	}
	if trailers {
		h["Te"] = teTrailers
	}
}

// copyResponseHeader copies src into dst without the hop-by-hop headers, sharing the value
// slices (src is not used again).
func copyResponseHeader(dst, src http.Header) {
	conn := src["Connection"]
	for k, vv := range src {
		if isHopHeader(k) {
			continue
		}
		if len(conn) > 0 && containsToken(conn, k) {
			continue
		}
		dst[k] = vv
	}
}

func isHopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// upgradeType returns the protocol a request or response asks to switch to ("" if none):
// the Upgrade header's value when Connection lists "upgrade".
func upgradeType(h http.Header) string {
	if !containsToken(h["Connection"], "upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// containsToken reports whether a comma-separated header value list contains token,
// compared case-insensitively, without allocating.
func containsToken(values []string, token string) bool {
	for _, v := range values {
		for len(v) > 0 {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(textproto.TrimString(t), token) {
				return true
			}
		}
	}
	return false
}

// idempotent reports whether a request with this method may be repeated (RFC 9110 §9.2.2).
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace,
		http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// validToken reports whether s is a non-empty RFC 9110 token (a header name or method).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

func isTchar(c byte) bool {
	return tcharTable[c]
}

var tcharTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

package proxy

import (
	"net/http"
	"net/textproto"
	"strings"

	"github.com/podmesh/podmesh/lb"
)

// pickInfo computes the request's consistent-hash key, if the policy names one and the
// request carries it. It allocates nothing.
func (u *Upstream) pickInfo(r *http.Request) lb.PickInfo {
	switch u.pol.HashOn.Source {
	case HashHeader:
		if v := r.Header[u.hashKey]; len(v) > 0 {
			return hashInfo(v[0])
		}
	case HashCookie:
		if v, ok := cookieValue(r.Header["Cookie"], u.pol.HashOn.Name); ok {
			return hashInfo(v)
		}
	case HashSourceIP:
		return hashInfo(hostOf(r.RemoteAddr))
	}
	return lb.PickInfo{}
}

// hashInfo hashes a key with lb.Hash, which is the same in every process, so every
// sidecar sends a given key to the same instance.
func hashInfo(key string) lb.PickInfo {
	return lb.PickInfo{Hash: lb.Hash(key), HasHash: true}
}

// cookieValue finds a cookie in Cookie header values without parsing them into
// http.Cookie values.
func cookieValue(headers []string, name string) (string, bool) {
	for _, line := range headers {
		for len(line) > 0 {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = textproto.TrimString(part)
			k, v, ok := strings.Cut(part, "=")
			if ok && k == name {
				if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
					v = v[1 : len(v)-1]
				}
				return v, true
			}
		}
	}
	return "", false
}

// hostOf returns the host part of a host:port address without allocating.
func hostOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		addr = addr[:i]
	}
	return strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
}

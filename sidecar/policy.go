package sidecar

import (
	"time"

	"github.com/podmesh/podmesh/lb"
	"github.com/podmesh/podmesh/proxy"
)

// policy translates an upstream's configuration into the proxy policy and the balancer
// configuration. The proxy's and lb's own defaults fill what is still zero.
func (u Upstream) policy() (proxy.Policy, lb.Config, error) {
	hash, err := proxy.ParseHashOn(u.HashOn)
	if err != nil {
		return proxy.Policy{}, lb.Config{}, err
	}
	retryOn, err := proxy.ParseRetryOn(u.RetryOn)
	if err != nil {
		return proxy.Policy{}, lb.Config{}, err
	}
	p := proxy.Policy{
		ConnectTimeout: time.Duration(max(u.ConnectTimeout, 0)),
		Timeout:        time.Duration(u.Timeout), // None (-1) means no timeout, as in proxy
		PerTryTimeout:  time.Duration(max(u.PerTryTimeout, 0)),
		RetryOn:        retryOn,
		RetryBudget:    proxy.RetryBudget{Percent: u.Budget.Percent, MinConcurrent: u.Budget.MinConcurrent},
		Breakers: proxy.Breakers{
			MaxConnections:     u.Breakers.MaxConnections,
			MaxPendingRequests: u.Breakers.MaxPendingRequests,
			MaxRequests:        u.Breakers.MaxRequests,
			MaxRetries:         u.Breakers.MaxRetries,
		},
		HashOn: hash,
	}
	if u.Retries != nil {
		p.Retries = *u.Retries
		if p.Retries == 0 {
			p.Retries = -1 // proxy: negative means none, zero means the default
		}
	}
	return p, lb.Config{Policy: lb.Policy(u.LB), Outlier: u.Outlier}, nil
}

// limits translates the listener limits.
func (l Limits) proxy() proxy.Limits {
	return proxy.Limits{
		MaxHeaderBytes:    l.MaxHeaderBytes,
		MaxHeaderCount:    l.MaxHeaderCount,
		ReadHeaderTimeout: time.Duration(max(l.ReadHeaderTimeout, 0)),
		IdleTimeout:       time.Duration(max(l.IdleTimeout, 0)),
		MaxConnections:    l.MaxConnections,
	}
}

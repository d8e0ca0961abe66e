package sidecar

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/consul/api"
)

// keepRegistered probes the app every check interval and reports the result to the
// registry through the instance's TTL check. The first probe happens before the
// registration, so an instance never starts passing with a dead app. When a TTL update
// fails (the registry restarted and lost the instance, or was unreachable) the next round
// registers the instance again.
func (s *Sidecar) keepRegistered(ctx context.Context) {
	probeClient := &http.Client{
		Timeout:   time.Duration(s.cfg.Check.Timeout),
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	defer probeClient.CloseIdleConnections()
	registered := false
	t := time.NewTicker(time.Duration(s.cfg.Check.Interval))
	defer t.Stop()
	agent := s.client.Agent()
	for {
		status, output := s.probe(ctx, probeClient)
		q := (&api.QueryOptions{}).WithContext(ctx)
		var err error
		if !registered {
			err = agent.ServiceRegisterOpts(s.registration(status, output),
				api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx))
			if err == nil {
				s.log.Info("registered", "id", s.cfg.ID, "status", status)
			}
		} else {
			err = agent.UpdateTTLOpts(s.checkID(), output, status, q)
		}
		if ctx.Err() != nil {
			return
		}
		registered = err == nil
		s.health.mu.Lock()
		s.health.Registered, s.health.Status, s.health.Output, s.health.LastProbe = registered, status, output, time.Now()
		s.health.LastError = ""
		if err != nil {
			s.health.LastError = err.Error()
		}
		s.health.mu.Unlock()
		if err != nil {
			s.log.Warn("registry update failed; will register again", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probe checks the app: GET on the check path (any status below 400 passes), or a TCP
// connect when no path is configured.
func (s *Sidecar) probe(ctx context.Context, c *http.Client) (status, output string) {
	if s.cfg.Check.HTTP == "" {
		d := net.Dialer{Timeout: time.Duration(s.cfg.Check.Timeout)}
		conn, err := d.DialContext(ctx, "tcp", s.cfg.App)
		if err != nil {
			return api.HealthCritical, fmt.Sprintf("TCP connect %s: %v", s.cfg.App, err)
		}
		conn.Close()
		return api.HealthPassing, fmt.Sprintf("TCP connect %s: Success", s.cfg.App)
	}
	url := "http://" + s.cfg.App + s.cfg.Check.HTTP
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return api.HealthCritical, err.Error()
	}
	req.Header.Set("User-Agent", "podmesh-sidecar health check")
	res, err := c.Do(req)
	if err != nil {
		return api.HealthCritical, fmt.Sprintf("HTTP GET %s: %v", url, err)
	}
	body, _ := io.ReadAll(io.LimitReader(res.Body, 512))
	res.Body.Close()
	out := fmt.Sprintf("HTTP GET %s: %s Output: %s", url, res.Status, body)
	if res.StatusCode >= 400 {
		return api.HealthCritical, out
	}
	return api.HealthPassing, out
}

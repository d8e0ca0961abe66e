package supervisor

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/launcher/compose"
	"github.com/podmesh/podmesh/launcher/pod"
)

// Edge is a call a project declares: Source's sidecar calls Destination.
type Edge struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
}

func (e Edge) String() string { return e.Source + " -> " + e.Destination }

// Edges lists the calls the project declares, sorted: every service to each upstream that is
// a service of the project (x-podmesh.upstreams; external ones are no services of the
// mesh), and the project's ingress to each exposed service.
func Edges(p *compose.Project) []Edge {
	seen := map[Edge]bool{}
	var out []Edge
	add := func(e Edge) {
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	for i := range p.Services {
		svc := &p.Services[i]
		for _, u := range svc.Mesh.Upstreams {
			if _, ok := p.Service(u.Name); ok && !u.External {
				add(Edge{Source: svc.Name, Destination: u.Name})
			}
		}
		if svc.Mesh.Expose.IsValid() {
			add(Edge{Source: pod.IngressService(p.Name), Destination: svc.Name})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Source != out[j].Source {
			return out[i].Source < out[j].Source
		}
		return out[i].Destination < out[j].Destination
	})
	return out
}

func intentionsClient(regURL string) (*api.Connect, error) {
	cfg := api.DefaultConfig()
	cfg.Address = regURL
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("supervisor: registry client for %s: %w", regURL, err)
	}
	return c.Connect(), nil
}

// allowEdges creates an allow intention for every declared edge the registry has no
// intention for; an intention already there (the operator's, perhaps a deny) is left as it
// is. Each one is recorded in the state before it is created, so `down`, even after a
// killed launcher, deletes exactly those.
func (s *Supervisor) allowEdges(ctx context.Context, regURL string) error {
	edges := Edges(s.project)
	if len(edges) == 0 {
		return nil
	}
	conn, err := intentionsClient(regURL)
	if err != nil {
		return err
	}
	for _, e := range edges {
		q := (&api.QueryOptions{}).WithContext(ctx)
		have, _, err := conn.IntentionGetExact(e.Source, e.Destination, q)
		if err != nil {
			return fmt.Errorf("supervisor: read the intention %s at %s: %w", e, regURL, err)
		}
		if have != nil {
			if have.Action != api.IntentionActionAllow {
				s.cfg.Logf("intention %s is already in the registry as %q; left as it is", e, have.Action)
			}
			continue
		}
		if err := s.state.update(func(st *State) { st.Intentions = append(st.Intentions, e) }); err != nil {
			return err
		}
		ixn := &api.Intention{
			SourceName:      e.Source,
			DestinationName: e.Destination,
			Action:          api.IntentionActionAllow,
			Description:     "declared in the compose file of project " + s.project.Name + " (podmesh launcher)",
		}
		if _, err := conn.IntentionUpsert(ixn, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
			return fmt.Errorf("supervisor: create the intention %s at %s: %w", e, regURL, err)
		}
	}
	return nil
}

// removeIntentions deletes the intentions a launcher created (State.Intentions); deleting
// one already gone succeeds.
func removeIntentions(ctx context.Context, regURL string, edges []Edge) error {
	if len(edges) == 0 || regURL == "" {
		return nil
	}
	conn, err := intentionsClient(regURL)
	if err != nil {
		return err
	}
	for _, e := range edges {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := conn.IntentionDeleteExact(e.Source, e.Destination, (&api.WriteOptions{}).WithContext(dctx))
		cancel()
		if err != nil {
			return fmt.Errorf("supervisor: delete the intention %s at %s: %w", e, regURL, err)
		}
	}
	return nil
}

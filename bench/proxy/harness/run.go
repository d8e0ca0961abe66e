package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Run runs the configured scenarios, prints the tables to out as it goes (progress lines
// go to progress, which may be nil), writes proxy.json into OutDir when set, and returns
// the report. Every process it started is stopped and its temp dir removed before it
// returns. Missed targets are not errors; a failure to run at all is.
func Run(ctx context.Context, c Config, out, progress io.Writer) (*Report, error) {
	c = c.withDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("bench: config: %w", err)
	}
	dir, err := os.MkdirTemp("", "podmesh-bench-proxy-")
	if err != nil {
		return nil, fmt.Errorf("bench: temp dir: %w", err)
	}
	if c.KeepTmp {
		fmt.Fprintf(out, "keeping the temp dir (BENCH_KEEP_TMP=1): %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	// nginx workers drop root privileges: they need to traverse the prefix directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("bench: chmod %s: %w", dir, err)
	}
	r := &runner{cfg: c, dir: dir, progress: progress}
	defer r.close()

	rep := &Report{Meta: collectMeta(ctx, c)}
	probe, err := r.startBackend(ctx)
	if err != nil {
		return nil, fmt.Errorf("bench: backend: %w", err)
	}
	rep.Meta.Backend = r.backend.Kind
	if r.backend.Kind == "go" {
		rep.Meta.Backend = "go (net/http, HTTP/1.1 and h2c on one port, in its own process)"
	} else {
		rep.Meta.Backend = "nginx (return 200 from memory, HTTP/1.1 and h2c on two ports)"
	}
	rep.Meta.BackendProbe = probe
	printHeader(out, rep.Meta, c)

	rounds := map[string][]Result{}
	for round := 1; round <= c.Rounds; round++ {
		for _, name := range c.Scenarios {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			r.logf("scenario %s (round %d/%d)", name, round, c.Rounds)
			res := r.runScenario(ctx, name)
			rounds[name] = append(rounds[name], res)
			if c.Rounds == 1 {
				printScenario(out, res, c)
			}
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	for _, name := range c.Scenarios {
		res := mergeRounds(rounds[name])
		rep.Scenarios = append(rep.Scenarios, res)
		if c.Rounds > 1 {
			printScenario(out, res, c)
		}
	}
	if r.reg != nil {
		rep.Meta.Registry = r.reg.Kind
		fmt.Fprintf(out, "\nregistry for the sidecar scenarios: %s\n", r.reg.Kind)
	}
	rep.Ratios = ratios(rep.Scenarios)
	rep.Targets = targets(rep.Scenarios, c)
	rep.Meta.LoadAvgEnd = loadAvg()
	printSummary(out, rep.Scenarios, c)
	printRatios(out, rep.Ratios, c)
	printTargets(out, rep.Targets)
	fmt.Fprintf(out, "\nload average at the end: %s\n", rep.Meta.LoadAvgEnd)
	if c.OutDir != "" {
		if err := writeJSON(filepath.Join(c.OutDir, "proxy.json"), rep); err != nil {
			return rep, err
		}
		fmt.Fprintf(out, "results: %s\n", filepath.Join(c.OutDir, "proxy.json"))
	}
	return rep, nil
}

// runScenario starts a scenario's chain, measures it and stops it.
func (r *runner) runScenario(ctx context.Context, name string) Result {
	ch, err := r.chainFor(ctx, name)
	if err != nil {
		res := Result{Scenario: name, Status: StatusUnavailable, Reason: err.Error()}
		var se *skipError
		if errors.As(err, &se) {
			res.Status, res.Reason = se.Status, se.Reason
		}
		r.logf("%s: %s: %s", name, res.Status, res.Reason)
		return res
	}
	defer ch.stop()
	return r.measure(ctx, name, ch)
}

func writeJSON(path string, rep *Report) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("bench: results dir: %w", err)
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench: write %s: %w", path, err)
	}
	return nil
}

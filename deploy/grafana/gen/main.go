// Command gen writes Podmesh's Grafana dashboards (package deploy/grafana) as JSON files, one
// per dashboard: `go generate ./deploy/grafana` runs it.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/podmesh/podmesh/deploy/grafana"
)

func main() {
	out := flag.String("out", "dashboards", "`directory` to write the dashboards to")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, d := range grafana.Dashboards() {
		b, err := grafana.Render(d)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, grafana.FileName(d)), b, 0o644); err != nil {
			return fmt.Errorf("write dashboard %s: %w", d.UID, err)
		}
	}
	return nil
}

package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// runTool runs a load generator to completion (bounded by limit) and returns its stdout.
func runTool(ctx context.Context, pin string, limit time.Duration, stdin []byte, argv ...string) (string, error) {
	if pin != "" {
		argv = append([]string{"taskset", "-c", pin}, argv...)
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 2 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, lastLine(errb.String()+out.String()))
	}
	return out.String(), nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// secs formats a duration as whole seconds, at least 1, for the tools' flags.
func secs(d time.Duration) string {
	n := int(d.Round(time.Second) / time.Second)
	if n < 1 {
		n = 1
	}
	return strconv.Itoa(n)
}

// wrk runs `wrk --latency` against url for d.
func (c Config) wrk(ctx context.Context, url string, d time.Duration) (WrkResult, string, error) {
	if c.Wrk == "" {
		return WrkResult{}, "", errors.New("wrk not installed")
	}
	out, err := runTool(ctx, c.PinLoad, d+30*time.Second, nil, c.Wrk,
		"-t", strconv.Itoa(c.Threads), "-c", strconv.Itoa(c.Conns), "-d", secs(d)+"s",
		"--timeout", "5s", "--latency", url)
	if err != nil {
		return WrkResult{}, out, err
	}
	r, err := ParseWrk(out)
	return r, out, err
}

// h2load runs h2load (h2c with prior knowledge for an http:// URL) for Duration after
// Warmup.
func (c Config) h2load(ctx context.Context, url string) (H2loadResult, string, error) {
	if c.H2load == "" {
		return H2loadResult{}, "", errors.New("h2load not installed")
	}
	args := []string{c.H2load, "-t", strconv.Itoa(c.Threads), "-c", strconv.Itoa(c.H2Conns),
		"-m", strconv.Itoa(c.H2Streams), "-D", secs(c.Duration)}
	if c.Warmup > 0 {
		args = append(args, "--warm-up-time="+secs(c.Warmup))
	}
	out, err := runTool(ctx, c.PinLoad, max(c.Warmup, 0)+c.Duration+30*time.Second, nil, append(args, url)...)
	if err != nil {
		return H2loadResult{}, out, err
	}
	r, err := ParseH2load(out)
	return r, out, err
}

// vegeta attacks url at a fixed rate for VegetaDuration (open loop) and reports.
func (c Config) vegeta(ctx context.Context, dir, url string, rate int) (VegetaResult, error) {
	if c.Vegeta == "" {
		return VegetaResult{}, errors.New("vegeta not built (PODMESH_VEGETA_BIN)")
	}
	bin := filepath.Join(dir, "vegeta-"+strconv.Itoa(rate)+".bin")
	defer os.Remove(bin)
	if _, err := runTool(ctx, c.PinLoad, c.VegetaDuration+40*time.Second, []byte("GET "+url+"\n"), c.Vegeta,
		"attack", "-rate", strconv.Itoa(rate)+"/1s", "-duration", c.VegetaDuration.String(),
		"-timeout", "10s", "-output", bin); err != nil {
		return VegetaResult{}, err
	}
	out, err := runTool(ctx, "", time.Minute, nil, c.Vegeta, "report", "-type=json", bin)
	if err != nil {
		return VegetaResult{}, err
	}
	return ParseVegeta([]byte(out))
}

// Command testapp is the small HTTP app the launcher's end-to-end tests run in pods, beside
// the real sidecar.
//
//	testapp -listen ADDR                GET / answers "hello from HOSTNAME"
//	testapp -listen ADDR -upstream URL  GET / answers "<upstream's answer> via HOSTNAME"
//	testapp -probe URL                  a healthcheck: exit 0 if GET URL answers 2xx
//
// -alloc-mib allocates and touches that much memory in steps before serving (an OOM test),
// -exit-after ends it with status 3, -fail-after makes it answer 500 (a failing
// healthcheck), -ignore-term ignores SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("testapp", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "address")
	allocMiB := fs.Int("alloc-mib", 0, "MiB to allocate and touch, 8 MiB at a time")
	exitAfter := fs.Duration("exit-after", 0, "exit with status 3 after this long")
	ignoreTerm := fs.Bool("ignore-term", false, "ignore SIGTERM")
	upstream := fs.String("upstream", "", "URL whose answer GET / passes on (through the sidecar)")
	failAfter := fs.Duration("fail-after", 0, "answer 500 once it has run this long (a failing healthcheck)")
	probe := fs.String("probe", "", "GET this URL and exit 0 if it answers 2xx (a healthcheck)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *probe != "" {
		return probeURL(*probe)
	}
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	}
	var hold [][]byte
	for i := 0; i < *allocMiB/8; i++ {
		b := make([]byte, 8<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		hold = append(hold, b)
		fmt.Printf("allocated %d MiB\n", (i+1)*8)
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	host, _ := os.Hostname()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	began := time.Now()
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if *failAfter > 0 && time.Since(began) > *failAfter {
			http.Error(w, "sick", http.StatusInternalServerError)
			return
		}
		if *upstream == "" {
			fmt.Fprintf(w, "hello from %s\n", host)
			return
		}
		resp, err := client.Get(*upstream)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			http.Error(w, fmt.Sprintf("upstream %s: %v: %s", resp.Status, err, b), http.StatusBadGateway)
			return
		}
		fmt.Fprintf(w, "%s via %s", b, host)
	})}
	go func() { _ = srv.Serve(l) }()
	fmt.Printf("testapp on %s (%s), holding %d MiB, env %s\n", l.Addr(), host, len(hold)*8, strings.Join(os.Environ(), " "))
	sigs := []os.Signal{syscall.SIGTERM, syscall.SIGINT}
	if *ignoreTerm {
		sigs = sigs[1:] // signal.Notify would undo signal.Ignore
	}
	ctx, stop := signal.NotifyContext(context.Background(), sigs...)
	defer stop()
	if *exitAfter > 0 {
		t := time.NewTimer(*exitAfter)
		select {
		case <-t.C:
			return 3
		case <-ctx.Done():
		}
	}
	<-ctx.Done()
	fmt.Println("testapp: stopping on signal")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.Canceled) {
		return 1
	}
	return 0
}

func probeURL(url string) int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		fmt.Fprintln(os.Stderr, resp.Status)
		return 1
	}
	return 0
}

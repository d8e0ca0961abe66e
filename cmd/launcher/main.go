// Command launcher runs a Compose file's services as isolated, meshed pods.
//
//	launcher [flags] up [-d] [-f FILE] [-metrics ADDR] [-trace-endpoint URL]
//	                                     start (foreground; -d in the background); metrics on
//	                                     ADDR (default gateway:15091, the bridge's gateway),
//	                                     sidecars' spans to URL through a relay
//	launcher [flags] ps [-f FILE | -p NAME]
//	launcher [flags] logs [-follow] [-c app|sidecar|init] [-p NAME] SERVICE[/REPLICA]
//	launcher [flags] down [-f FILE | -p NAME]
//
// The logic lives in launcher/supervisor; this file only wires it to the process.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/podmesh/podmesh/launcher/initproc"
	"github.com/podmesh/podmesh/launcher/supervisor"
)

func main() {
	// First: this binary is also every pod's init and exec shim.
	if ok, code := initproc.Main(); ok {
		os.Exit(code)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := supervisor.CLI(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "launcher:", err)
		os.Exit(1)
	}
}

// Package deps pins the project's chosen dependencies in go.mod until the code that uses
// each of them lands. Delete an import here once a real package imports it.
package deps

import (
	_ "github.com/compose-spec/compose-go/v2/loader"
	_ "github.com/containerd/cgroups/v3"
	_ "github.com/google/nftables"
	_ "github.com/hashicorp/consul/api"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/vishvananda/netlink"
	_ "go.etcd.io/bbolt"
	_ "go.opentelemetry.io/otel"
	_ "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	_ "go.opentelemetry.io/otel/sdk/trace"
	_ "golang.org/x/sync/errgroup"
	_ "golang.org/x/sys/unix"
	_ "google.golang.org/grpc"
	_ "gopkg.in/yaml.v3"
)

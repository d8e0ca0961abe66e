package grafana

// Dashboards returns every Podmesh dashboard, in a stable order.
func Dashboards() []Dashboard {
	return []Dashboard{Mesh(), Service(), Launcher(), Registry()}
}

// Series selectors of the sidecars' request metrics. A sidecar's metrics carry the target
// label service (its local service, from the scrape configuration); inbound series have the
// local service as destination, outbound ones as source.
const (
	inbound  = `direction="inbound"`
	outbound = `direction="outbound"`
	// of the selected service's sidecar
	svc         = `service="$service"`
	svcInbound  = svc + `, ` + inbound
	svcOutbound = svc + `, ` + outbound
)

// Mesh is the overview: request rate, error ratio and latency per service, measured by each
// service's own sidecar on its inbound side (what its callers got).
func Mesh() Dashboard {
	d := newDashboard("podmesh-mesh", "Podmesh / Mesh overview",
		"Request rate, error ratio and latency of every service of the mesh, as its sidecar served them (inbound). Each series links to the service's traces in Jaeger.")
	l := newLayout(&d)
	reqs := sumRate("", "podmesh_requests_total", inbound)
	l.row("Mesh")
	l.stat("Requests", 6, ts(target(orVectorZero(reqs), "")), unit("reqps"),
		desc("Requests per second served by all the services' sidecars."))
	l.stat("Errors (5xx)", 6, ts(target(ratio(sumRate("", "podmesh_requests_total", inbound+`, code_class="5xx"`), reqs), "")),
		unit("percentunit"), desc("Share of inbound requests answered 5xx."))
	l.stat("Requests in flight", 6, ts(target(`sum(podmesh_requests_active{`+inbound+`})`, "")))
	l.stat("Services", 6, ts(target(`count(count by (destination) (podmesh_requests_total{`+inbound+`}))`, "")),
		desc("Services whose sidecars have served requests."))

	l.row("By service")
	perSvc := sumRate("destination", "podmesh_requests_total", inbound)
	l.timeseries("Request rate by service", 12, ts(target(perSvc, "{{destination}}")), unit("reqps"), seriesTraces("destination"))
	l.timeseries("Error ratio (5xx) by service", 12,
		ts(target(ratio(sumRate("destination", "podmesh_requests_total", inbound+`, code_class="5xx"`), perSvc), "{{destination}}")),
		unit("percentunit"), seriesTraces("destination"))
	l.timeseries("Latency p50 / p95 / p99 by service", 24,
		quantileTargets("destination", "podmesh_request_duration_seconds", inbound, "{{destination}}"), unit("s"), seriesTraces("destination"))
	l.timeseries("Responses by status class", 12, ts(target(sumRate("code_class", "podmesh_requests_total", inbound), "{{code_class}}")),
		unit("reqps"), stacked())
	l.timeseries("Calls between services", 12, ts(target(sumRate("source, destination", "podmesh_requests_total", outbound), "{{source}} → {{destination}}")),
		unit("reqps"), seriesTraces("source"), desc("Requests each service's app sent to each upstream, counted by the caller's sidecar."))
	return d
}

// Service is one service in detail ($service): callers and upstreams, retries, ejections,
// breakers, TLS and authorization.
func Service() Dashboard {
	d := newDashboard("podmesh-service", "Podmesh / Service",
		"One service as its sidecars see it: inbound by caller, outbound by upstream, retries, ejections, circuit breakers, mutual TLS and authorization. Panels link to the service's traces in Jaeger.",
		serviceVar("podmesh_requests_total", "service"))
	l := newLayout(&d)
	jaeger := traces("$service")

	l.row("Inbound: callers of $service")
	in := sumRate("source", "podmesh_requests_total", svcInbound)
	l.timeseries("Inbound request rate by caller", 8, ts(target(in, "{{source}}")), unit("reqps"), jaeger,
		desc("source is the caller's verified identity; unknown for plaintext callers."))
	l.timeseries("Inbound error ratio (5xx) by caller", 8,
		ts(target(ratio(sumRate("source", "podmesh_requests_total", svcInbound+`, code_class="5xx"`), in), "{{source}}")),
		unit("percentunit"), jaeger)
	l.timeseries("Inbound latency p50 / p95 / p99", 8, quantileTargets("", "podmesh_request_duration_seconds", svcInbound, ""), unit("s"), jaeger)
	l.timeseries("Inbound responses by status class", 8, ts(target(sumRate("code_class", "podmesh_requests_total", svcInbound), "{{code_class}}")),
		unit("reqps"), stacked(), jaeger)
	l.timeseries("Requests in flight", 8, ts(target(`sum by (direction) (podmesh_requests_active{`+svc+`})`, "{{direction}}")), jaeger)
	l.timeseries("Bytes", 8, ts(
		target(sumRate("direction", "podmesh_request_bytes_total", svc), "{{direction}} requests"),
		target(sumRate("direction", "podmesh_response_bytes_total", svc), "{{direction}} responses")), unit("Bps"))

	l.row("Outbound: upstreams of $service")
	out := sumRate("destination", "podmesh_requests_total", svcOutbound)
	l.timeseries("Outbound request rate by upstream", 8, ts(target(out, "{{destination}}")), unit("reqps"), jaeger)
	l.timeseries("Outbound error ratio (5xx) by upstream", 8,
		ts(target(ratio(sumRate("destination", "podmesh_requests_total", svcOutbound+`, code_class="5xx"`), out), "{{destination}}")),
		unit("percentunit"), jaeger)
	l.timeseries("Outbound latency p50 / p95 / p99 by upstream", 8,
		quantileTargets("destination", "podmesh_request_duration_seconds", svcOutbound, "{{destination}}"), unit("s"), jaeger)
	l.timeseries("Retries by upstream", 8, ts(
		target(orZero(sumRate("destination", "podmesh_retries_total", svc), out), "{{destination}} retries"),
		target(orZero(sumRate("destination", "podmesh_retry_budget_exhausted_total", svc), out), "{{destination}} budget exhausted")),
		unit("reqps"), jaeger, desc("Retries the sidecar made, and retries the retry budget refused."))
	l.timeseries("Endpoints by state", 8, ts(target(`sum by (destination, state) (podmesh_endpoints{`+svc+`})`, "{{destination}} {{state}}")),
		stacked(), desc("Instances of each upstream in the sidecar's balancer: ready, or ejected by outlier detection."))
	l.timeseries("Ejections by upstream", 8, ts(target(orZero(sumRate("destination", "podmesh_ejections_total", svc), out), "{{destination}}")),
		unit("ops"), jaeger)
	l.timeseries("Circuit breaker trips", 12, ts(target(
		orZero(sumRate("direction, destination, breaker", "podmesh_breaker_trips_total", svc), sumRate("direction, destination", "podmesh_requests_total", svc)),
		"{{direction}} {{destination}} {{breaker}}")), unit("ops"), jaeger,
		desc("Requests and connections refused by a limit (max_connections, max_pending_requests, max_requests, max_retries)."))
	l.timeseries("TCP connections", 12, ts(
		target(orVectorZero(sumRate("direction, destination", "podmesh_tcp_connections_opened_total", svc)), "{{direction}} {{destination}} opened"),
		target(orVectorZero(sumRate("direction, destination", "podmesh_tcp_connections_closed_total", svc)), "{{direction}} {{destination}} closed")),
		unit("ops"), desc("Connections of services whose protocol is tcp (0 for HTTP services)."))

	l.row("Security: mutual TLS and authorization")
	l.timeseries("TLS handshakes and failures", 8, ts(
		target(sumRate("direction", "podmesh_tls_handshakes_total", svc), "{{direction}} handshakes"),
		target(orZero(sumRate("direction, reason", "podmesh_tls_handshake_failures_total", svc), sumRate("direction", "podmesh_tls_handshakes_total", svc)),
			"{{direction}} failures {{reason}}")), unit("ops"), jaeger)
	l.timeseries("Authorization by caller", 8, ts(
		target(sumRate("source", "podmesh_authz_allowed_total", svc), "{{source}} allowed"),
		target(orZero(sumRate("source", "podmesh_authz_denied_total", svc), sumRate("source", "podmesh_authz_allowed_total", svc)), "{{source}} denied")),
		unit("ops"), jaeger, desc("Inbound connections and requests allowed or denied by intentions."))
	l.timeseries("Certificate lifetime left", 8, ts(target(`min by (instance_id) (podmesh_tls_cert_expiry_timestamp_seconds{`+svc+`}) - time()`, "{{instance_id}}")),
		unit("s"), desc("Time until each sidecar's leaf certificate expires; it renews at 60–90% of its life."))
	return d
}

// Launcher is the pods the launcher supervises: running pods, restarts, OOM kills, CPU and
// memory against their limits.
func Launcher() Dashboard {
	d := newDashboard("podmesh-launcher", "Podmesh / Launcher",
		"The pods the launcher runs, from their cgroups: running pods, states, restarts, OOM kills, CPU and memory against the limits. Each series links to the service's traces in Jaeger.")
	l := newLayout(&d)
	l.row("Pods")
	l.timeseries("Running pods by service", 8, ts(target(`sum by (service) (podmesh_launcher_pods)`, "{{service}}")), seriesTraces("service"))
	l.timeseries("Pods by state", 8, ts(target(`sum by (state) (podmesh_launcher_pod_state)`, "{{state}}")), stacked())
	l.timeseries("Restarts and OOM kills", 8, ts(
		target(`sum by (service) (increase(podmesh_launcher_restarts_total`+rateWindow+`))`, "{{service}} restarts"),
		target(`sum by (service) (increase(podmesh_launcher_oom_kills_total`+rateWindow+`))`, "{{service}} OOM kills")),
		seriesTraces("service"))

	l.row("Resources against limits")
	l.timeseries("CPU used by pod", 12, ts(
		target(sumRate("service, replica", "podmesh_launcher_cpu_seconds_total", `member="pod"`), "{{service}}-{{replica}} used"),
		target(`podmesh_launcher_cpu_limit_cores > 0`, "{{service}}-{{replica}} limit")), unit("cores"), seriesTraces("service"))
	l.timeseries("Memory used by pod", 12, ts(
		target(`sum by (service, replica) (podmesh_launcher_memory_bytes{member="pod"})`, "{{service}}-{{replica}} used"),
		target(`podmesh_launcher_memory_limit_bytes > 0`, "{{service}}-{{replica}} limit")), unit("bytes"), seriesTraces("service"))
	l.timeseries("Memory used / limit", 12, ts(target(
		`sum by (service, replica) (podmesh_launcher_memory_bytes{member="pod"}) / on (service, replica) (podmesh_launcher_memory_limit_bytes > 0)`,
		"{{service}}-{{replica}}")), unit("percentunit"), desc("Pods without a memory limit are left out."))
	l.timeseries("CPU: app and sidecar", 12, ts(target(sumRate("service, member", "podmesh_launcher_cpu_seconds_total", `member!="pod"`), "{{service}} {{member}}")),
		unit("cores"), stacked(), desc("What the sidecar costs next to the app."))
	return d
}

// Registry is the registry's API: requests and latency by route, open blocking queries,
// instances by health, check runs.
func Registry() Dashboard {
	d := newDashboard("podmesh-registry", "Podmesh / Registry",
		"The registry's HTTP API (Consul-compatible): requests and latency by route, open blocking queries, service instances by health, health-check runs, the mesh CA.")
	l := newLayout(&d)
	reqs := sumRate("route", "podmesh_registry_http_requests_total", "")
	l.row("API")
	l.timeseries("Requests by route", 12, ts(target(reqs, "{{route}}")), unit("reqps"))
	l.timeseries("Errors (4xx, 5xx) by route", 12, ts(target(
		orZero(sumRate("route, code", "podmesh_registry_http_requests_total", `code=~"[45].."`), reqs), "{{route}} {{code}}")), unit("reqps"))
	l.timeseries("Latency p50 / p95 / p99", 12, quantileTargets("", "podmesh_registry_http_request_duration_seconds", "", ""), unit("s"),
		desc("Blocking queries count their wait: a high p99 is watchers waiting for changes."))
	l.timeseries("Latency p99 by route", 12, ts(target(
		`histogram_quantile(0.99, sum by (route, le) (`+rate("podmesh_registry_http_request_duration_seconds_bucket", "")+`))`, "{{route}}")), unit("s"))

	l.row("Catalog and health")
	l.timeseries("Open blocking queries", 8, ts(target(`sum(podmesh_registry_blocking_queries)`, "watchers")),
		desc("Watchers (sidecars, Prometheus) waiting for a change."))
	l.timeseries("Instances by health", 8, ts(target(`sum by (status) (podmesh_registry_instances)`, "{{status}}")), stacked())
	l.timeseries("Check runs by type and result", 8, ts(target(sumRate("type, result", "podmesh_registry_check_runs_total", ""), "{{type}} {{result}}")),
		unit("ops"))

	l.row("Mesh CA")
	l.timeseries("Leaf certificates issued", 12, ts(target(sumRate("", "podmesh_registry_connect_leaf_certs_issued_total", ""), "issued")), unit("ops"))
	l.timeseries("Authorize decisions", 12, ts(target(orVectorZero(sumRate("decision", "podmesh_registry_connect_authorize_total", "")), "{{decision}}")),
		unit("ops"))
	return d
}

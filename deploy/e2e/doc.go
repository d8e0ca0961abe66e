// Package e2e holds the end-to-end test of the observability deployment (issue 6,
// acceptance 2): the shipped Prometheus configuration discovers the registry and the
// sidecars through the registry, and every query of every Grafana dashboard returns data.
package e2e

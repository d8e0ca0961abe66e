package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/template"
)

// nginxConf describes one nginx instance. Every path lives in Dir (nginx runs with
// -p Dir -c Dir/NAME.conf -g 'daemon off;'), never under /etc/nginx.
type nginxConf struct {
	Name     string // a, b, backend
	Dir      string
	Workers  int
	ListenH1 string // host:port for HTTP/1.1
	ListenH2 string // host:port for h2c with prior knowledge (nginx 1.22: its own listener); may be empty

	Body string // backend: answer every request with this body

	Upstream    string // proxy: host:port of the next hop
	UpstreamTLS bool   // proxy A in nginx-mtls: TLS 1.3 with a client certificate to B
	ServerTLS   bool   // proxy B in nginx-mtls: TLS 1.3, client certificate required; ListenH1 is the TLS port
	Certs       *certs
	ConnLog     string // B with ServerTLS: one line per new connection, with $ssl_session_reused
}

var nginxTmpl = template.Must(template.New("nginx").Parse(`# podmesh bench: nginx {{.Name}}
worker_processes {{.Workers}};
pid {{.Dir}}/{{.Name}}.pid;
error_log {{.Dir}}/{{.Name}}.error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 4096; }
http {
  access_log off;
  server_tokens off;
  # Clients and the previous hop keep their connections: no reconnect every 1000 requests.
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path {{.Dir}}/{{.Name}}-body;
  proxy_temp_path {{.Dir}}/{{.Name}}-proxy;
  fastcgi_temp_path {{.Dir}}/{{.Name}}-fastcgi;
  uwsgi_temp_path {{.Dir}}/{{.Name}}-uwsgi;
  scgi_temp_path {{.Dir}}/{{.Name}}-scgi;
{{- if .Upstream}}
  upstream next {
    server {{.Upstream}};
    keepalive 1024;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }
{{- end}}
{{- if .ConnLog}}
  map $connection_requests $bench_first_request { 1 1; default 0; }
  log_format bench_conn '$connection $ssl_protocol $ssl_session_reused';
{{- end}}
  server {
{{- if .ServerTLS}}
    listen {{.ListenH1}} ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate {{.Certs.ServerCert}};
    ssl_certificate_key {{.Certs.ServerKey}};
    ssl_client_certificate {{.Certs.CA}};
    ssl_verify_client on;
    ssl_session_cache shared:bench:10m;
    ssl_session_timeout 1h;
{{- else}}
    listen {{.ListenH1}};
{{- end}}
{{- if .ListenH2}}
    listen {{.ListenH2}} http2;
{{- end}}
{{- if .ConnLog}}
    access_log {{.ConnLog}} bench_conn if=$bench_first_request buffer=64k flush=1s;
{{- end}}
    location / {
{{- if .Body}}
      default_type text/plain;
      return 200 "{{.Body}}";
{{- else if .UpstreamTLS}}
      proxy_pass https://next;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_certificate {{.Certs.ClientCert}};
      proxy_ssl_certificate_key {{.Certs.ClientKey}};
      proxy_ssl_trusted_certificate {{.Certs.CA}};
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 2;
      proxy_ssl_name {{.Certs.ServerName}};
      proxy_ssl_session_reuse on;
{{- else}}
      proxy_pass http://next;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
{{- end}}
    }
  }
}
`))

// render returns the configuration text.
func (n nginxConf) render() (string, error) {
	var b bytes.Buffer
	if err := nginxTmpl.Execute(&b, n); err != nil {
		return "", fmt.Errorf("bench: nginx %s config: %w", n.Name, err)
	}
	return b.String(), nil
}

// startNginx writes the configuration and starts nginx in the foreground.
func startNginx(bin, pin string, n nginxConf) (*Proc, error) {
	text, err := n.render()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(n.Dir, n.Name+".conf")
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("bench: write %s: %w", conf, err)
	}
	// nginx reports configuration errors on stderr (kept in the Proc's output) before it
	// opens its error_log.
	return startProc("nginx-"+n.Name, pin, nil, nil, bin, "-p", n.Dir, "-c", conf, "-g", "daemon off;")
}

// countConnLog reads B's per-connection log: connections (each a TLS 1.3 handshake) and
// how many of them resumed a session.
func countConnLog(path string) (conns, resumed int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("bench: nginx connection log: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		conns++
		if fields[2] == "r" {
			resumed++
		}
	}
	return conns, resumed, sc.Err()
}

// haproxyConf describes one haproxy instance of the haproxy pair: HTTP/1.1 or h2c from
// the client, HTTP/2 between the two proxies (as between two sidecars), HTTP/1.1 to the
// backend.
type haproxyConf struct {
	Name     string
	Dir      string
	Threads  int
	Listen   string // host:port; h2c prior knowledge is detected on the same port
	BindH2   bool   // B: the previous hop speaks h2 only
	Upstream string
	UpH2     bool // A: speak h2 to B
}

var haproxyTmpl = template.Must(template.New("haproxy").Parse(`# podmesh bench: haproxy {{.Name}}
global
  nbthread {{.Threads}}
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  http-reuse always
frontend fe
  bind {{.Listen}}{{if .BindH2}} proto h2{{end}}
  default_backend be
backend be
  server next {{.Upstream}}{{if .UpH2}} proto h2{{end}} maxconn 4096
`))

func startHaproxy(bin, pin string, h haproxyConf) (*Proc, error) {
	var b bytes.Buffer
	if err := haproxyTmpl.Execute(&b, h); err != nil {
		return nil, fmt.Errorf("bench: haproxy %s config: %w", h.Name, err)
	}
	conf := filepath.Join(h.Dir, "haproxy-"+h.Name+".cfg")
	if err := os.WriteFile(conf, b.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("bench: write %s: %w", conf, err)
	}
	return startProc("haproxy-"+h.Name, pin, nil, nil, bin, "-db", "-f", conf)
}

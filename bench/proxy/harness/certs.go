package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// certs are the files of the nginx-mtls scenario: an ECDSA P-256 CA, a server leaf for
// proxy B and a client leaf for proxy A, made with openssl.
type certs struct {
	CA                    string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	ServerName            string
}

// makeCerts generates the CA and the two leaves into dir.
func makeCerts(ctx context.Context, openssl, dir string) (*certs, error) {
	c := &certs{
		CA:         filepath.Join(dir, "ca.crt"),
		ServerCert: filepath.Join(dir, "b.crt"), ServerKey: filepath.Join(dir, "b.key"),
		ClientCert: filepath.Join(dir, "a.crt"), ClientKey: filepath.Join(dir, "a.key"),
		ServerName: "proxy-b.bench.internal",
	}
	caKey := filepath.Join(dir, "ca.key")
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, openssl, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("bench: openssl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	genKey := func(path string) error {
		return run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
	}
	if err := genKey(caKey); err != nil {
		return nil, err
	}
	if err := run("req", "-x509", "-new", "-key", caKey, "-subj", "/CN=podmesh bench CA", "-days", "2",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
		"-out", c.CA); err != nil {
		return nil, err
	}
	leaf := func(name, cert, key, ext string) error {
		if err := genKey(key); err != nil {
			return err
		}
		csr := filepath.Join(dir, name+".csr")
		extFile := filepath.Join(dir, name+".ext")
		if err := os.WriteFile(extFile, []byte(ext), 0o600); err != nil {
			return fmt.Errorf("bench: write %s: %w", extFile, err)
		}
		if err := run("req", "-new", "-key", key, "-subj", "/CN="+name, "-out", csr); err != nil {
			return err
		}
		return run("x509", "-req", "-in", csr, "-CA", c.CA, "-CAkey", caKey, "-CAcreateserial",
			"-days", "2", "-sha256", "-extfile", extFile, "-out", cert)
	}
	if err := leaf(c.ServerName, c.ServerCert, c.ServerKey,
		"subjectAltName=DNS:"+c.ServerName+",IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n"); err != nil {
		return nil, err
	}
	if err := leaf("proxy-a.bench.internal", c.ClientCert, c.ClientKey,
		"subjectAltName=DNS:proxy-a.bench.internal\nextendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"); err != nil {
		return nil, err
	}
	return c, nil
}

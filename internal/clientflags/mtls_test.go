package clientflags

import (
	"errors"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// writeClient issues a client certificate of id and writes it and its key.
func writeClient(t *testing.T, ca *selfsigned.CA, id transport.Identity) (string, string) {
	t.Helper()
	p, err := ca.IssueClient(selfsigned.ClientOptions{CommonName: id.Name, URIs: []*url.URL{id.URI()}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key := filepath.Join(dir, id.Name+".pem"), filepath.Join(dir, id.Name+".key")
	if err := os.WriteFile(cert, p.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, p.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func TestClientCertificateFlags(t *testing.T) {
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cert, key := writeClient(t, ca, transport.Identity{Role: transport.RoleNode, Name: "alice"})
	f, _ := parse(t, "--root-certificates", "ca.crt", "--client-certificate", cert, "--client-key", key)
	o, err := f.TLS()
	if err != nil {
		t.Fatal(err)
	}
	if o.ClientCertificate != cert || o.ClientKey != key || o.Role != transport.RoleNode {
		t.Errorf("TLS = %+v", o)
	}
	if d := f.Describe(); !strings.Contains(d, "presenting "+cert+" (sepal:node:alice)") {
		t.Errorf("Describe = %q", d)
	}

	// The Driver API's commands say ServerApp.
	fs := cli.NewFlagSet(cli.Command{Name: "x"}, io.Discard)
	g := Register(fs, "0.0.0.0:9091", "Driver API")
	if err := cli.Parse(fs, nil); err != nil {
		t.Fatal(err)
	}
	if o, _ := g.TLS(); o.Role != transport.RoleServerApp {
		t.Errorf("Driver API role %q", o.Role)
	}
	if u := fs.Lookup("client-certificate").Usage; !strings.Contains(u, "ServerApp certificate") || !strings.Contains(u, "flower-certs serverapp") {
		t.Errorf("--client-certificate help for a ServerApp: %q", u)
	}

	for _, c := range []struct {
		args  []string
		usage bool
		want  string
	}{
		{[]string{"--client-certificate", cert}, true, "needs --client-key"},
		{[]string{"--client-key", key}, true, "needs --client-certificate"},
		{[]string{"--insecure", "--client-certificate", cert, "--client-key", key}, true, "--insecure and --client-certificate conflict"},
		{[]string{"--client-certificate", key, "--client-key", cert}, false, "swapped"},
		{[]string{"--client-certificate", cert + ".x", "--client-key", key}, false, ".x"},
	} {
		f, _ := parse(t, c.args...)
		_, err := f.TLS()
		var ue *cli.UsageError
		if err == nil || !strings.Contains(err.Error(), c.want) || errors.As(err, &ue) != c.usage {
			t.Errorf("%q: %v, want a (usage %v) error with %q", c.args, err, c.usage, c.want)
		}
	}
}

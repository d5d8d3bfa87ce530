package clientflags

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// TestClientKeyErrorsNameTheKeyFlag: an error about the key file names
// --client-key, not --client-certificate.
func TestClientKeyErrorsNameTheKeyFlag(t *testing.T) {
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cert, key := writeClient(t, ca, transport.Identity{Role: transport.RoleNode, Name: "alice"})
	empty := filepath.Join(t.TempDir(), "empty.key")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"--client-certificate", cert, "--client-key", key + ".missing"}, "--client-key"},
		{[]string{"--client-certificate", cert, "--client-key", empty}, "--client-key"},
		{[]string{"--client-certificate", cert + ".missing", "--client-key", key}, "--client-certificate"},
	} {
		f, _ := parse(t, c.args...)
		_, err := f.TLS()
		if err == nil || !strings.HasPrefix(err.Error(), c.flag+":") {
			t.Errorf("%q: %v, want an error starting with %s:", c.args, err, c.flag)
		}
	}
}

// TestClientCertificateOfAnotherRole: a certificate of the other role is
// refused at start, naming the flag and the command that issues the right
// one.
func TestClientCertificateOfAnotherRole(t *testing.T) {
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodeCert, nodeKey := writeClient(t, ca, transport.Identity{Role: transport.RoleNode, Name: "alice"})
	appCert, appKey := writeClient(t, ca, transport.Identity{Role: transport.RoleServerApp, Name: "app"})
	for _, c := range []struct {
		api, cert, key string
		words          []string
	}{
		{"Driver API", nodeCert, nodeKey, []string{"--client-certificate", nodeCert, "sepal:node:alice", "flower-certs serverapp NAME"}},
		{"Fleet API", appCert, appKey, []string{"--client-certificate", appCert, "sepal:serverapp:app", "flower-certs node NAME"}},
	} {
		fs := cli.NewFlagSet(cli.Command{Name: "x"}, io.Discard)
		f := Register(fs, "0.0.0.0:9091", c.api)
		if err := cli.Parse(fs, []string{"--client-certificate", c.cert, "--client-key", c.key}); err != nil {
			t.Fatal(err)
		}
		_, err := f.TLS()
		var ue *cli.UsageError
		if err == nil || errors.As(err, &ue) {
			t.Errorf("%s with %s: %v, want a (non-usage) error", c.api, c.cert, err)
			continue
		}
		for _, w := range c.words {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q lacks %q", c.api, err, w)
			}
		}
	}
}
